"""PyTorch as a peer in the benchmarks: the same models, weights, batches, noise, losses and optimizer as a
gan-engine Trainer, in PyTorch eager mode. Benchmarks only: the engine never imports torch.

`TorchTrainer(trainer)` copies a Trainer's G, D, data and settings; its `step()` runs the same Algorithm 1
(k D steps on a real and a fake half, then one G step through a frozen D), drawing indices and noise from a
NumPy generator seeded like the Trainer's, so its first step reproduces the Trainer's first step.
"""
import numpy as np

from gan_engine.layers import Activation, BatchNorm, Conv2d, ConvTranspose2d, Dense, Flatten, Maxout, Reshape

try:
    import torch
    from torch import nn
except ImportError:  # the benchmarks leave the peer out
    torch = None


def torch_version():
    return None if torch is None else torch.__version__


def _activation(name, alpha):
    return {"identity": None, "relu": nn.ReLU(), "leaky_relu": nn.LeakyReLU(alpha), "tanh": nn.Tanh(),
            "sigmoid": nn.Sigmoid()}[name]


def torch_model(model):
    """A gan-engine Sequential -> an nn.Sequential with the same layers and a copy of its weights and statistics."""
    modules = []
    for layer, in_shape in zip(model.layers, model.shapes):
        p = {k: torch.from_numpy(np.array(model.backend.to_numpy(v), dtype=np.float32))
             for k, v in {**layer.params, **layer.stats}.items()}
        if isinstance(layer, Dense):
            m = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias)
            m.weight.data = p["W"].T.contiguous()
            if layer.bias:
                m.bias.data = p["b"]
        elif isinstance(layer, Maxout):  # as PyTorch users write it: a Linear to units x pieces, max-pooled
            linear = nn.Linear(layer.in_features, layer.units * layer.pieces)
            linear.weight.data, linear.bias.data = p["W"].T.contiguous(), p["b"]
            m = nn.Sequential(linear, nn.Unflatten(1, (1, layer.units * layer.pieces)), nn.MaxPool1d(layer.pieces),
                              nn.Flatten())
        elif isinstance(layer, (Conv2d, ConvTranspose2d)):
            cls = nn.Conv2d if isinstance(layer, Conv2d) else nn.ConvTranspose2d
            extra = {} if isinstance(layer, Conv2d) else {"output_padding": layer.output_padding}
            m = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                    bias=layer.bias, **extra)
            m.weight.data = p["W"]
            if layer.bias:
                m.bias.data = p["b"]
        elif isinstance(layer, BatchNorm) and layer.slots > 1:
            m = SlotBatchNorm(p["gamma"], p["beta"], layer.slots, layer.eps, layer.momentum)
        elif isinstance(layer, BatchNorm):
            cls = nn.BatchNorm1d if len(in_shape) == 1 else nn.BatchNorm2d
            m = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum)
            m.weight.data, m.bias.data = p["gamma"], p["beta"]
            m.running_mean.data, m.running_var.data = p["running_mean"], p["running_var"]
        elif isinstance(layer, Flatten):
            m = nn.Flatten()
        elif isinstance(layer, Reshape):
            m = nn.Unflatten(1, layer.shape)
        elif isinstance(layer, Activation):
            m = None
        else:
            raise TypeError(f"no PyTorch twin for {layer!r}")
        modules += [m] if m is not None else []
        act = getattr(layer, "activation", "identity")
        if act != "identity":
            modules.append(_activation(act, layer.alpha))
    return nn.Sequential(*modules)


class SlotBatchNorm(nn.Module if torch else object):
    """Batch norm per pack slot as a PyTorch user writes it: the rows (B m, C[, H, W]) viewed as (B, m C[, H, W]),
    normalised as m C channels whose scale and shift are the C shared ones repeated. Its running statistics are
    torch's own per slot and channel: the step's cost and losses are the engine's, not its sampling statistics."""

    def __init__(self, gamma, beta, slots, eps, momentum):
        super().__init__()
        self.weight, self.bias = nn.Parameter(gamma), nn.Parameter(beta)
        self.slots, self.eps, self.momentum = slots, eps, momentum
        self.register_buffer("running_mean", torch.zeros(slots * len(gamma)))
        self.register_buffer("running_var", torch.ones(slots * len(gamma)))

    def forward(self, x):
        m = self.slots if self.training else 1
        mean, var = (self.running_mean, self.running_var) if m > 1 else (self.running_mean[:len(self.weight)],
                                                                         self.running_var[:len(self.weight)])
        y = nn.functional.batch_norm(x.reshape(x.shape[0] // m, -1, *x.shape[2:]), mean, var,
                                     self.weight.repeat(m), self.bias.repeat(m), self.training, self.momentum,
                                     self.eps)
        return y.reshape(x.shape)


class TorchTrainer:
    """The PyTorch eager twin of a gan-engine Trainer (Adam, non-saturating loss, no label smoothing).

    On the CPU it draws indices and noise from NumPy exactly as the Trainer does; on a GPU (device="cuda") it
    draws them with PyTorch's generator on the device, as a PyTorch user would. With graph=True (GPU only) the
    step is captured as one CUDA graph after WARMUP eager steps on a side stream, as PyTorch's CUDA graphs notes
    describe for whole-network capture (capturable Adam, gradients zeroed in place, the default generator).
    """

    WARMUP = 3

    def __init__(self, trainer, seed=0, device="cpu", graph=False):
        self.device, self.graph = torch.device(device), graph
        self.G, self.D = torch_model(trainer.G).to(self.device), torch_model(trainer.D).to(self.device)
        self.opt_g, self.opt_d = (
            torch.optim.Adam(model.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps,
                             capturable=graph)
            for model, opt in ((self.G, trainer.opt_g), (self.D, trainer.opt_d)))
        data = np.asarray(trainer.backend.to_numpy(trainer.data), dtype=np.float32)
        self.data = torch.from_numpy(data).to(self.device)
        self.batch_size, self.k_disc, self.z_dim = trainer.batch_size, trainer.k_disc, trainer.z_dim
        self._step = self._simultaneous_step if trainer.update == "simultaneous" else self._alternating_step
        self.pac, self.draws = trainer.pac, trainer.batch_size * trainer.pac  # samples drawn a batch (PacGAN)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        if graph:
            torch.manual_seed(seed)  # a captured graph draws from the default generator
        self.torch_rng = None if graph else torch.Generator(device=self.device).manual_seed(seed)
        self._captured, self._eager_steps = None, 0  # (graph, its metrics) once captured
        self._z = np.empty((self.draws, self.z_dim), dtype=np.float32)
        self.ones = torch.ones(self.batch_size, 1, device=self.device)
        self.zeros = torch.zeros(self.batch_size, 1, device=self.device)
        self.bce = nn.BCEWithLogitsLoss()

    def _noise(self):
        if self.device.type != "cpu":
            return torch.randn(self.draws, self.z_dim, device=self.device, generator=self.torch_rng)
        self.rng.standard_normal(dtype=np.float32, out=self._z)
        return torch.from_numpy(self._z)

    def _indices(self):
        n = self.data.shape[0]
        if self.device.type != "cpu":
            return torch.randint(0, n, (self.draws,), device=self.device, generator=self.torch_rng)
        return torch.from_numpy(self.rng.integers(0, n, size=self.draws))

    def step(self):
        """k D steps, then one G step (or the Trainer's simultaneous update); returns the last D loss, G loss,
        mean D(x), mean D(G(z)) as tensors."""
        if not self.graph:
            return self._step()
        if self._captured is None and self._eager_steps < self.WARMUP:
            self._eager_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                metrics = self._step()
            torch.cuda.current_stream().wait_stream(side)
            return metrics
        if self._captured is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                metrics = self._step()
            self._captured = graph, metrics
        graph, metrics = self._captured
        graph.replay()
        return metrics

    def _simultaneous_step(self):
        """Both players' gradients from one batch at the same weights, then both updates (Trainer.update)."""
        B = self.batch_size
        real = self.data[self._indices()].reshape(B, -1)
        fake = self.G(self._noise()).reshape(B, -1)
        logits = self.D(torch.cat([real, fake]))  # one pass: no batch norm in D
        logits_real, logits_fake = logits[:B], logits[B:]
        loss_real, loss_fake = self.bce(logits_real, self.ones), self.bce(logits_fake, self.zeros)
        g_loss = self.bce(logits_fake, self.ones)
        d_params, g_params = list(self.D.parameters()), list(self.G.parameters())
        d_grads = torch.autograd.grad(loss_real + loss_fake, d_params, retain_graph=True)
        g_grads = torch.autograd.grad(g_loss, g_params)
        for p, grad in zip(d_params + g_params, d_grads + g_grads):
            p.grad = grad
        self.opt_d.step()
        self.opt_g.step()
        return {"d_loss": (loss_real + loss_fake).detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(logits_real).mean().detach(),
                "d_fake": torch.sigmoid(logits_fake).mean().detach()}

    def _alternating_step(self):
        for _ in range(self.k_disc):
            real = self.data[self._indices()].reshape(self.batch_size, -1)  # packed: m samples side by side
            with torch.no_grad():
                fake = self.G(self._noise()).reshape(self.batch_size, -1)
            self.opt_d.zero_grad(set_to_none=False)
            logits_real = self.D(real)
            loss_real = self.bce(logits_real, self.ones)
            loss_real.backward()
            logits_fake = self.D(fake)
            loss_fake = self.bce(logits_fake, self.zeros)
            loss_fake.backward()
            self.opt_d.step()
        self.D.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=False)
        g_loss = self.bce(self.D(self.G(self._noise()).reshape(self.batch_size, -1)), self.ones)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        return {"d_loss": (loss_real + loss_fake).detach(), "g_loss": g_loss.detach(),
                "d_real": torch.sigmoid(logits_real).mean().detach(), "d_fake": torch.sigmoid(logits_fake).mean().detach()}

    @staticmethod
    def read_metrics(metrics):
        return {k: float(v) for k, v in metrics.items()}
