"""MDConfig: bad settings are clear errors before anything runs, unknown keywords
are TypeErrors naming them, and the keyword and config forms of run_replicas
are one and the same run."""
import dataclasses

import numpy as np
import pytest
from ase.build import molecule

from ase_flashschnet import MDConfig as TopLevelMDConfig
from ase_flashschnet.calculator import ForceEngine
from ase_flashschnet.md import MDConfig, run_replicas
from ase_flashschnet.md.simulation import Simulation


@pytest.fixture
def model_and_ethanol(small_model):
    return small_model(cutoff=3.0), molecule("CH3CH2OH")


@pytest.mark.parametrize("settings,message", [
    (dict(dt_fs=0), "dt_fs must be positive, got 0"),
    (dict(dt_fs=float("nan")), "dt_fs must be positive"),
    (dict(integrator="leapfrog"), "integrator must be 'baoab' or 'nve', got 'leapfrog'"),
    (dict(traj_interval=0), "traj_interval must be a positive number of steps, got 0"),
    (dict(traj_interval=None), "traj_interval must be a positive number of steps, got None"),
    (dict(check_interval=0), "check_interval must be a positive number of steps, got 0"),
    (dict(checkpoint_interval=-5, out_dir="run"), "checkpoint_interval must be a number of steps"),
    (dict(checkpoint_interval=10), "checkpoint_interval needs out_dir"),
    (dict(max_displacement=0.0), "max_displacement must be a positive distance in A, got 0.0"),
    (dict(devices=[]), "devices must name at least one device (or be 'all'), got"),
    (dict(devices=" , "), "devices must name at least one device (or be 'all'), got ' , '"),
    (dict(devices=2), "devices must be 'all', a list of devices or a comma-separated string, got 2"),
    (dict(device="cpu", devices=["cpu", "cpu"]), "give device (one) or devices (several), not both"),
])
def test_bad_settings_are_clear_value_errors(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MDConfig(**settings)


def test_bad_settings_fail_before_the_model_is_touched():
    ethanol = molecule("CH3CH2OH")
    with pytest.raises(ValueError, match="dt_fs must be positive"):
        run_replicas("no such model", ethanol, steps=1, dt_fs=-1.0)


def test_defaults_are_valid_and_the_config_is_frozen():
    config = MDConfig()
    assert TopLevelMDConfig is MDConfig
    assert config.dt_fs == 2.0 and config.integrator == "baoab" and config.checkpoint_interval is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dt_fs = 1.0
    assert dataclasses.replace(config, dt_fs=1.0).dt_fs == 1.0
    assert MDConfig.from_options(config, {}) is config


def test_unknown_keywords_are_type_errors_naming_them(model_and_ethanol):
    model, ethanol = model_and_ethanol
    with pytest.raises(TypeError, match="'dt', 'temperature'"):
        run_replicas(model, ethanol, steps=1, dt=1.0, temperature=300, progress=False)
    with pytest.raises(TypeError, match="positional"):
        run_replicas(model, ethanol, 1, 1, 0.5)  # dt_fs is keyword-only
    with pytest.raises(TypeError, match="config must be an MDConfig"):
        run_replicas(model, ethanol, steps=1, config={"dt_fs": 1.0})


def test_keyword_and_config_forms_are_the_same_run(model_and_ethanol, tmp_path):
    model, ethanol = model_and_ethanol
    settings = dict(dt_fs=0.5, temperature_K=[200, 400], friction_per_fs=0.05, precision="fp64", skin=0.3,
                    traj_interval=5, progress=False, seed=3, check_interval=4, neighbor_backend="emulate")
    keywords = run_replicas(model, ethanol, replicas=2, steps=20, out_dir=tmp_path / "a", checkpoint_interval=10,
                            **settings)
    config = MDConfig(**settings, out_dir=tmp_path / "b", checkpoint_interval=10)
    configured = run_replicas(model, ethanol, replicas=2, steps=20, config=config)
    overridden = run_replicas(model, ethanol, replicas=2, steps=20, config=dataclasses.replace(config, seed=99),
                              seed=3, out_dir=tmp_path / "c")
    for result in (configured, overridden):
        np.testing.assert_array_equal(result.positions, keywords.positions)
        np.testing.assert_array_equal(result.final_velocities, keywords.final_velocities)
        assert result.seed == 3 and result.neighbor_mode == keywords.neighbor_mode == "in-graph"
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and (tmp_path / "c" / "checkpoint.pt").is_file()


def test_simulation_still_takes_keyword_settings(model_and_ethanol):
    """benchmarks/md_throughput.py --profile builds the simulation with keywords."""
    model, ethanol = model_and_ethanol
    engine = ForceEngine(model, device="cpu", precision="fp64")
    sim = Simulation(engine, [ethanol.copy(), ethanol.copy()], dt_fs=0.5, temperature_K=300.0,
                      friction_per_fs=0.001, integrator="baoab", skin=0.5, seed=0, cuda_graph=True,
                      max_displacement=1.0, checkpoint=None, check_interval=5, edge_margin=0.05)
    assert sim.config.dt_fs == 0.5 and sim.advance(3) is None and sim.step == 3
