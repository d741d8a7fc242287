"""The plugin's options: one object from ``fusionrcg(...)`` down to the kernels.

:class:`Options` holds every choice a user can make about how FusionRCG builds
J and K.  ``fusionrcg(mf, ...)`` makes one (:func:`from_env`) and hands it down
through the J/K context, the GPU build and the kernel routing; nothing below
reads the environment.  The environment variables are read here alone, and
only fill the defaults of what the caller did not give:

=========================  ==========================================
``FUSIONRCG_TIER``         ``tier``
``FUSIONRCG_CTR``          ``ctr``
``FUSIONRCG_FUSE=0``       ``fuse_digestion=False``
``FUSIONRCG_SCRATCH_MB``   ``scratch_mb``
``FUSIONRCG_PROGRESS=0``   ``progress=False``
``FUSIONRCG_J_ENGINE``     ``j_engine``
``FUSIONRCG_GPU_GRADIENTS=1``  ``gpu_gradients=True``
``FUSIONRCG_PREPARED=0``   the on-disk cache of prepared objects off
                           (:func:`prepared_cache_enabled`, per process)
=========================  ==========================================
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass

from .codegen.variant import CTR_MODES, TIERS

BACKENDS = ("auto", "gpu", "cpu")
#: What each backend means, as the command-line tools say it.
BACKEND_HELP = ("auto: the GPU when one is usable, else the SCF object's own PySCF J/K "
                "(with a warning); gpu: the GPU, an error without one; cpu: FusionRCG's "
                "host path, a slow reference for checks")
CTR_CHOICES = ("auto",) + CTR_MODES
J_ENGINE_CHOICES = ("off", "on")

#: Each option that an environment variable can set, and how its text reads.
ENV = {
    "tier": ("FUSIONRCG_TIER", str),
    "ctr": ("FUSIONRCG_CTR", str),
    "fuse_digestion": ("FUSIONRCG_FUSE", lambda v: v != "0"),
    "scratch_mb": ("FUSIONRCG_SCRATCH_MB", float),
    "progress": ("FUSIONRCG_PROGRESS", lambda v: v != "0"),
    "j_engine": ("FUSIONRCG_J_ENGINE", str),
    "gpu_gradients": ("FUSIONRCG_GPU_GRADIENTS", lambda v: v not in ("0", "")),
}
PREPARED_ENV = "FUSIONRCG_PREPARED"
#: Why GPUs (``Options.devices``) and the host path do not go together.
DEVICES_NEED_GPU = "devices= shares the GPU path's builds over GPUs; backend='cpu' is the host path"
#: Seconds of kernel preparation or of a host-path build before its progress bar shows.
PROGRESS_DELAY_S = 2.0


@dataclass(frozen=True)
class Options:
    """How FusionRCG builds J and K.

    backend: 'auto' (the GPU when there is one, else the SCF object's own J/K),
        'gpu' or 'cpu' (the engine's host path, a slow reference).
    direct_scf_tol: screening threshold; None takes ``mf.direct_scf_tol``.
    tier: force one storage tier of the GPU kernels for every class
        ('register', 'shared', 'warp', 'global'); None lets the routing choose.
    ctr: the contracted stage of the warp and global tiers: 'auto' (by the
        routing rule), 'ops' or 'pairmap'.  The register and shared tiers
        always run the ops: on them 'pairmap' gives 'ops'.
    fuse_digestion: small register-tier blocks are digested into J and K inside
        their integral kernel (False: separate kernels, for comparisons).
    scratch_mb: device scratch per integral class; None takes a quarter of
        the free GPU memory, at most 8 GiB.
    progress: a progress bar (after a couple of seconds) while GPU kernels are
        prepared and while the host path builds J and K.
    j_engine: 'on' builds J through the J engine
        (:mod:`pyscf_fusionrcg.jengine`: the density folded into the class
        programs): on the host path every J (with K from the integral blocks
        alongside), on the GPU path the J-only builds (``with_k=False``, pure
        functionals) through its J kernels (not yet run on a GPU: an
        experiment); the GPU's J+K builds keep the J/K kernels.  'off'
        (default): J from the integral blocks everywhere.
    gpu_gradients: nuclear gradients on the GPU path, and those of GPU4PySCF
        objects, take their two-electron part from FusionRCG's derivative
        kernels; off by default until they have run on a GPU (the gradients
        are then PySCF's or GPU4PySCF's own, with a warning).  The host path
        (``backend='cpu'``) always serves PySCF objects' gradients.
    devices: the GPU path's builds shared by several GPUs of this process
        (:mod:`pyscf_fusionrcg.distributed`): 'all', or a list of device
        ids (one id twice runs two parts on one GPU, which tests the
        sharing on one); None (default): the current GPU alone.  Not with
        ``backend='cpu'``, nor with ``comm=`` (over MPI each rank takes one
        GPU).
    """
    backend: str = "auto"
    direct_scf_tol: float | None = None
    tier: str | None = None
    ctr: str = "auto"
    fuse_digestion: bool = True
    scratch_mb: float | None = None
    progress: bool = True
    j_engine: str = "off"
    gpu_gradients: bool = False
    devices: tuple | str | None = None

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS} or None, not {self.tier!r}")
        if self.ctr not in CTR_CHOICES:
            raise ValueError(f"contracted stage must be one of {CTR_CHOICES}, not {self.ctr!r}")
        if self.j_engine not in J_ENGINE_CHOICES:
            raise ValueError(f"j_engine must be one of {J_ENGINE_CHOICES}, not {self.j_engine!r}")
        if self.direct_scf_tol is not None and not float(self.direct_scf_tol) >= 0:
            raise ValueError(f"direct_scf_tol must be a number >= 0, not {self.direct_scf_tol!r}")
        if self.scratch_mb is not None and not float(self.scratch_mb) > 0:
            raise ValueError(f"scratch_mb must be a positive number of MiB, not {self.scratch_mb!r}")
        if self.devices is not None:
            object.__setattr__(self, "devices", _device_ids(self.devices))   # frozen: set once, here
            if self.backend == "cpu":
                raise ValueError(DEVICES_NEED_GPU)

    def replace(self, **changes) -> "Options":
        return dataclasses.replace(self, **changes)


def _device_ids(devices):
    """``devices`` as Options keeps it: 'all', or a tuple of GPU ids."""
    if isinstance(devices, str) and devices == "all":
        return devices
    ids = () if isinstance(devices, str) or not hasattr(devices, "__iter__") else tuple(devices)
    if not ids or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d >= 0 for d in ids):
        raise ValueError(f"devices must be 'all' or a non-empty list of GPU ids (integers >= 0), "
                         f"not {devices!r}")
    return tuple(int(d) for d in ids)


def from_env(**given) -> Options:
    """Options with the values ``given`` (None counts as not given), the others
    from the environment (:data:`ENV`), else the defaults."""
    fields = {f.name for f in dataclasses.fields(Options)}
    unknown = set(given) - fields
    if unknown:
        raise TypeError(f"unknown FusionRCG option(s): {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(sorted(fields))}")
    values = {}
    for name, (var, parse) in ENV.items():
        text = os.environ.get(var)
        if text:
            try:
                values[name] = parse(text)
            except ValueError:
                raise ValueError(f"${var}={text!r} is not a valid {name}") from None
    values.update({k: v for k, v in given.items() if v is not None})
    return Options(**values)


def prepared_cache_enabled() -> bool:
    """False when ``$FUSIONRCG_PREPARED`` is '0'.  The cache is one per process,
    so this is read on every use (tests switch it)."""
    return os.environ.get(PREPARED_ENV, "1") != "0"
