"""Report: keys, JSON/table output, and the required liveness properties."""
import io
import itertools
import json
from contextlib import redirect_stdout

import pytest

from pyscf_fusionrcg import ir, report

KEYS = {'class', 'peak_live_naive', 'peak_live_unfused', 'peak_live', 'block_cart',
        'block_sph', 'tier', 'registers', 'spill_bytes'}


def _run(*argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert report.main(list(argv)) == 0
    return buf.getvalue()


def test_json_output():
    rows = json.loads(_run('--lmax', '1', '--json', '--no-gpu-stats'))
    assert len(rows) == 16
    assert all(set(r) == KEYS for r in rows)
    assert all(r['registers'] is None and r['spill_bytes'] is None for r in rows)
    assert [r['class'] for r in rows[:3]] == ['ssss', 'sssp', 'ssps']
    assert all(isinstance(r['tier'], str) for r in rows)


def test_table_output():
    text = _run('--class', 'dsps', '--class', 'ppdd', '--no-gpu-stats')
    lines = text.strip().splitlines()
    assert lines[0].split()[0] == 'class' and len(lines) == 3
    assert lines[1].split()[0] == 'dsps'


def _check(row):
    ls = ir.parse_class(row['class'])
    assert row['peak_live'] <= row['peak_live_unfused'] <= row['peak_live_naive'], row
    if sum(ls) >= 6:
        assert row['peak_live'] < row['peak_live_naive'], row


def test_properties_every_class_up_to_d():
    for row in report.rows(2, gpu_stats=False):
        _check(row)


def test_properties_sample_up_to_f():
    classes = [ls for ls in itertools.product(range(4), repeat=4) if 3 in ls][::7]
    for row in report.rows(classes=classes, gpu_stats=False):
        _check(row)


@pytest.mark.parametrize('name', ['dddd', 'ffff', 'gggg'])
def test_fusion_strictly_helps(name):
    row = report.rows(classes=[ir.parse_class(name)], gpu_stats=False)[0]
    _check(row)
    assert row['peak_live'] < row['peak_live_unfused']
    if name == 'gggg':
        assert (row['block_cart'], row['block_sph']) == (50625, 6561)
        assert row['block_cart'] / row['block_sph'] == pytest.approx((15 / 9) ** 4)
