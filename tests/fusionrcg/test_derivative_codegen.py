"""Derivative-block kernels (``ir.DerivProgram`` in the straight form): their
text is deterministic and named apart from the ERI kernels', the forms
without weighted accumulates refuse them, and the kernel compiles for sm_90
where nvcc is installed."""
import hashlib
import os
import pathlib
import subprocess
import sys

import pytest

from pyscf_fusionrcg import codegen, host, kernels, tiers
from pyscf_fusionrcg.derivative import derivative_program

from emulation import needs_nvcc

REPO = pathlib.Path(__file__).resolve().parents[2]


_HASH_SCRIPT = '''
import hashlib
from pyscf_fusionrcg import codegen
from pyscf_fusionrcg.derivative import derivative_program
prog = derivative_program(2, 1, 1, 0, cart=False)
src, name = codegen.emit_kernel_source(prog, codegen.make_variant(prog, 'register', 0.3, (1, 2, 2, 1)))
print(hashlib.sha256((name + src).encode()).hexdigest())
'''


def test_generated_source_is_deterministic():
    """Two generations from fresh programs, in this process and in two others
    of different string hashing, give one text."""
    def generate():
        prog = derivative_program(2, 1, 1, 0, cart=False)
        src, name = codegen.emit_kernel_source(prog, codegen.make_variant(prog, 'register', 0.3, (1, 2, 2, 1)))
        return hashlib.sha256((name + src).encode()).hexdigest()

    here = generate()
    assert generate() == here
    for seed in ('1', '2'):
        env = dict(os.environ, PYTHONHASHSEED=seed, PYTHONPATH=str(REPO))
        got = subprocess.run([sys.executable, '-c', _HASH_SCRIPT], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert got == here


def test_derivative_kernels_have_names_of_their_own():
    prog, plain = host.get_derivative_program(1, 0, 1, 0), host.get_program(1, 0, 1, 0)
    var = codegen.make_variant(prog, 'register')
    assert codegen.kernel_name(prog, var) == 'fr_deriv_abc_psps_sph_register_c_n1111_g1'
    assert codegen.kernel_name(plain, var) != codegen.kernel_name(prog, var)
    src, _ = codegen.emit_kernel_source(prog, var)
    assert 'const double wa0 = 2.0 * ai * wt0;' in src


def test_forms_without_weighted_accumulates_refuse_derivatives():
    prog = host.get_derivative_program(1, 0, 1, 0)
    with pytest.raises(ValueError, match='straight form'):
        tiers.derivative_variant(prog, 'warp')
    for tier, form in (('global', 'levels'), ('shared', 'table')):
        with pytest.raises(NotImplementedError, match='exponent-weighted'):
            codegen.encode_table(prog, codegen.make_variant(prog, tier, form=form))
    digest = codegen.Variant('register', digest=True)
    with pytest.raises(ValueError, match='not digested'):
        codegen.emit_kernel_source(prog, digest)


@needs_nvcc
def test_derivative_kernel_compiles_with_nvcc():
    """The register kernel of (ps|ps) derivatives, nctr 2 on the p shells,
    as CUDA for sm_90."""
    prog = host.get_derivative_program(1, 0, 1, 0)
    stats = tiers._nvcc_stats(*kernels.kernel_source(prog, tiers.derivative_variant(prog, None, 0.3, (2, 1, 2, 1))))
    assert 0 < stats['registers'] <= 255
