"""The training step as one CUDA graph: replays compute what eager launches compute, bit for bit.

Runs on a GPU (marker gpu) and on the CPU emulator, which captures as CUDA does (kernels, fills and array
arithmetic are recorded, not run, while a stream captures), so a value the step keeps on the host shows here.
"""
import numpy as np
import pytest

from gan_engine import Adam, Trainer, mlp_discriminator, mlp_generator, trainer as trainer_module
from gan_engine.backends import numpy_ref as R
from gan_engine.models import batchnorm_generator, dcgan_discriminator, dcgan_generator, maxout_discriminator


def make(backend, model, graph=True, seed=0, ema=0.0, update="alternating"):
    rng = np.random.default_rng(0)
    if model == "mlp":
        G = mlp_generator(4, (16,), 6, backend=backend, seed=seed)
        D = mlp_discriminator(6, (16,), backend=backend, seed=seed + 1)
        data = rng.uniform(-1, 1, (40, 6)).astype(np.float32)
    else:
        G = dcgan_generator(4, (1, 8, 8), (8, 4), backend=backend, seed=seed)
        D = dcgan_discriminator((1, 8, 8), (4, 8), backend=backend, seed=seed + 1)
        data = rng.uniform(-1, 1, (40, 64)).astype(np.float32)
    k_disc = 2 if update == "alternating" else 1
    return Trainer(G, D, data, batch_size=5, k_disc=k_disc, seed=seed, graph=graph, ema=ema, update=update,
                   opt_g=Adam(G, lr=1e-3, beta1=0.5), opt_d=Adam(D, lr=1e-3, beta1=0.5))


def losses(trainer, steps):
    return [trainer.read_metrics(trainer.step()) for _ in range(steps)]


def state(trainer):
    s = trainer.state_dict()
    return {"G": s["G"], "D": s["D"], "opt_g": s["opt_g"], "opt_d": s["opt_d"], "rng": s["rng"], "step": s["step"]}


def assert_same_state(a, b):
    assert a["step"] == b["step"] and a["rng"] == b["rng"]
    for part in ("G", "D", "opt_g", "opt_d"):
        for key in a[part]:
            np.testing.assert_array_equal(np.asarray(a[part][key]), np.asarray(b[part][key]), err_msg=f"{part} {key}")


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_graph_replays_equal_eager_launches(cuda_backend, model):
    graphed, eager = make(cuda_backend, model), make(cuda_backend, model, graph=False)
    assert losses(graphed, 6) == losses(eager, 6)
    assert graphed._graph is not None and eager._graph is None
    assert graphed.opt_d.t == 12 and graphed.opt_g.t == 6 and graphed.step_count == 6
    assert_same_state(state(graphed), state(eager))


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_the_graphed_simultaneous_step_equals_eager_launches(cuda_backend, model):
    graphed, eager = (make(cuda_backend, model, graph=g, update="simultaneous") for g in (True, False))
    assert losses(graphed, 6) == losses(eager, 6)
    assert graphed._graph is not None and graphed.opt_d.t == graphed.opt_g.t == 6
    assert_same_state(state(graphed), state(eager))


@pytest.mark.parametrize("model", ["maxout", "dcgan"])
def test_the_graphed_presets_step_equals_eager_launches(cuda_backend, model):
    """The pacgan presets' step: packing 2, simultaneous updates, G's batch norm per pack slot with a running
    standard deviation (kept by array arithmetic, captured too), real packs made once."""
    norm = {"eps": 1e-4, "running": "stdev", "slots": 2}
    rng = np.random.default_rng(0)
    models = []
    for graph in (True, False):
        if model == "maxout":
            G = batchnorm_generator(4, (16,), 6, backend=cuda_backend, seed=0, norm=norm)
            D = maxout_discriminator(12, (8,), 3, backend=cuda_backend, seed=1)
        else:
            G = dcgan_generator(4, (1, 8, 8), (8, 4), backend=cuda_backend, seed=0, norm=norm)
            D = dcgan_discriminator((2, 8, 8), (4, 8), backend=cuda_backend, seed=1)
        data = rng.uniform(-1, 1, (40, G.out_features)).astype(np.float32)
        models.append(Trainer(G, D, data, batch_size=5, seed=0, graph=graph, pac=2, update="simultaneous",
                              real_packs="fixed", opt_g=Adam(G, lr=1e-3, beta1=0.5), opt_d=Adam(D, lr=1e-3, beta1=0.5)))
        rng = np.random.default_rng(0)
    graphed, eager = models
    assert losses(graphed, 6) == losses(eager, 6)
    assert graphed._graph is not None
    assert_same_state(state(graphed), state(eager))
    for a, b in zip(graphed.G.state_dict().values(), eager.G.state_dict().values()):  # running statistics too
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_the_graphed_step_averages_g_as_eager_launches_do(cuda_backend, model):
    graphed, eager = make(cuda_backend, model, ema=0.9), make(cuda_backend, model, graph=False, ema=0.9)
    losses(graphed, 6)
    losses(eager, 6)
    assert graphed._graph is not None and graphed.g_average.t == eager.g_average.t == 6
    for key in ("params", "stats"):
        np.testing.assert_array_equal(graphed.state_dict()["G_average"][key], eager.state_dict()["G_average"][key])
    z = np.random.default_rng(1).standard_normal((7, 4)).astype(np.float32)
    np.testing.assert_array_equal(graphed.generate(z), eager.generate(z))


def test_a_restored_state_resumes_the_graphed_run_exactly(cuda_backend):
    run = make(cuda_backend, "mlp")
    losses(run, 4)
    saved = run.state_dict()
    rest = losses(run, 5)
    resumed = make(cuda_backend, "mlp", seed=3)
    losses(resumed, 4)  # a graph of its own, then dropped by the restore
    resumed.load_state_dict(saved)
    assert losses(resumed, 5) == rest
    assert_same_state(state(resumed), state(run))


def test_two_graphed_runs_stepped_in_turn_each_equal_eager_launches(cuda_backend):
    """One run's capture leaves the other run's Adam counts alone: the second, warmed up before the first captured,
    still counts every replay on the device (not a count written from the host into its graph)."""
    first, second, eager = make(cuda_backend, "mlp"), make(cuda_backend, "mlp"), make(cuda_backend, "mlp", graph=False)
    want = losses(eager, 6)
    got = [[], []]
    for _ in range(6):
        for run, seen in zip((first, second), got):
            seen += losses(run, 1)
    assert got == [want, want]
    assert_same_state(state(second), state(eager))


def test_the_test_sees_a_step_count_kept_on_the_host(cuda_backend, monkeypatch):
    """Captured before any eager step, Adam's first count is written from the host into the graph, and every
    replay writes it again: the replays then differ from eager launches."""
    monkeypatch.setattr(trainer_module, "GRAPH_WARMUP_STEPS", 0)
    graphed, eager = make(cuda_backend, "mlp"), make(cuda_backend, "mlp", graph=False)
    assert losses(graphed, 4) != losses(eager, 4)


def test_a_failed_capture_warns_and_goes_on_eagerly(cuda_backend, monkeypatch):
    def failing(body):
        body()  # as a capture that breaks after recording: host counters moved, the device ran nothing
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed, eager = make(cuda_backend, "mlp"), make(cuda_backend, "mlp", graph=False)
    monkeypatch.setattr(cuda_backend, "capture", failing)
    with pytest.warns(RuntimeWarning, match="CUDA graph failed .*not permitted.*eager launches"):
        got = losses(graphed, 4)
    assert got[:2] == losses(eager, 2) and not graphed.use_graph


def test_adam_counts_on_the_device_and_writes_a_resumed_count(cuda_backend):
    rng = np.random.default_rng(0)
    p, g = rng.standard_normal(300), rng.standard_normal(300)
    want_p, want_m, want_v = p.copy(), np.zeros(300), np.zeros(300)
    got = [cuda_backend.asarray(a, np.float32) for a in (p, g, np.zeros(300), np.zeros(300))]
    for step in (1, 2, 3, 7, 8):  # counted on the device, then a jump (a resumed run), then counted again
        R.adam_update(want_p, g, want_m, want_v, step, 1e-2, 0.5, 0.999, 1e-8)
        cuda_backend.adam_update(*got, step, 1e-2, 0.5, 0.999, 1e-8)
        np.testing.assert_allclose(cuda_backend.to_numpy(got[0]), want_p, rtol=1e-5, atol=1e-6, err_msg=step)
