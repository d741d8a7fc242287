"""The plugin's options: one object, the environment only filling its defaults."""
import pytest
from pyscf import gto, scf

from pyscf_fusionrcg import fusionrcg
from pyscf_fusionrcg.options import ENV, Options, from_env


@pytest.fixture
def clean_env(monkeypatch):
    for var, _ in ENV.values():
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_environment_fills_only_what_is_not_given(clean_env):
    assert from_env() == Options()
    clean_env.setenv("FUSIONRCG_TIER", "global")
    clean_env.setenv("FUSIONRCG_FUSE", "0")
    clean_env.setenv("FUSIONRCG_SCRATCH_MB", "512")
    clean_env.setenv("FUSIONRCG_PROGRESS", "0")
    clean_env.setenv("FUSIONRCG_CTR", "ops")
    got = from_env()
    assert (got.tier, got.fuse_digestion, got.scratch_mb, got.progress, got.ctr) == ("global", False, 512.0, False, "ops")
    assert from_env(tier="warp", ctr=None).tier == "warp"     # given wins; None counts as not given
    assert from_env(ctr=None).ctr == "ops"


def test_bad_options_are_refused_with_what_is_allowed(clean_env):
    with pytest.raises(ValueError, match="tier must be one of"):
        Options(tier="l2")
    with pytest.raises(ValueError, match="backend must be one of"):
        from_env(backend="cuda")
    with pytest.raises(ValueError, match="contracted stage must be one of"):
        Options(ctr="dense")
    with pytest.raises(ValueError, match="scratch_mb must be a positive"):
        Options(scratch_mb=0)
    with pytest.raises(TypeError, match="unknown FusionRCG option.*tierr"):
        from_env(tierr="warp")
    clean_env.setenv("FUSIONRCG_SCRATCH_MB", "lots")
    with pytest.raises(ValueError, match=r"\$FUSIONRCG_SCRATCH_MB='lots'"):
        from_env()


def test_the_plugin_holds_one_options_object(clean_env):
    mol = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    clean_env.setenv("FUSIONRCG_TIER", "shared")
    mf = scf.RHF(mol).apply(fusionrcg, backend="cpu", direct_scf_tol=1e-11, ctr="ops")
    assert mf.fusionrcg_options == Options(backend="cpu", direct_scf_tol=1e-11, tier="shared", ctr="ops")
    given = Options(backend="cpu", progress=False)
    assert scf.RHF(mol).apply(fusionrcg, options=given).fusionrcg_options == given
    assert scf.RHF(mol).apply(fusionrcg, options=given, tier="warp").fusionrcg_options.tier == "warp"
    with pytest.raises(TypeError, match="unknown FusionRCG option"):
        scf.RHF(mol).apply(fusionrcg, backend="cpu", tierr="warp")


def test_devices_are_kept_as_ids_or_all(clean_env):
    """Options.devices: a list of GPU ids (kept as a tuple, one id possibly
    twice) or 'all'; anything else, and GPUs for the host path, refused."""
    assert Options().devices is None
    assert Options(devices=[0, 0]).devices == (0, 0)
    assert from_env(devices=range(2)).devices == (0, 1)
    assert Options(devices="all").devices == "all"
    assert Options(devices=[1]).replace(tier="warp").devices == (1,)
    for bad in ([], "gpu", "0,1", 1, [-1], [0.5], [True], [None]):
        with pytest.raises(ValueError, match="devices must be 'all' or a non-empty list of GPU ids"):
            Options(devices=bad)
    with pytest.raises(ValueError, match="backend='cpu' is the host path"):
        Options(backend="cpu", devices=[0])
