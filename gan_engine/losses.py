"""GAN losses on discriminator logits, each one fused sigmoid-BCE call returning (loss, mean D, d loss/d logits).

With D(x) = sigmoid(logit(x)):
- discriminator, real half:  -mean log D(x)            (target 1, or 1 - s with one-sided label smoothing s)
- discriminator, fake half:  -mean log(1 - D(G(z)))    (target 0)
- generator, "non-saturating" (default): -mean log D(G(z))
- generator, "minimax" (the seeds' theoretical form): mean log(1 - D(G(z))), which G minimises
The discriminator's loss is the sum of its two halves. Every function writes d loss / d logits into `dlogits`.
"""
from .errors import check_choice

GENERATOR_LOSSES = ("non-saturating", "minimax")


def d_loss_real(backend, logits, dlogits, label_smoothing=0.0):
    """-mean log D(x) against target 1 - label_smoothing. logits, dlogits (N, 1) -> (loss, mean D(x))."""
    return backend.bce_with_logits(logits, 1.0 - label_smoothing, 1.0, dlogits)


def d_loss(backend, logits, dlogits, label_smoothing=0.0):
    """Both halves at once, on logits (2 N, 1) of N reals then N fakes (D's one pass over both): one call.
    -> (loss, mean D(x), mean D(G(z)))."""
    return backend.bce_real_fake(logits, 1.0 - label_smoothing, dlogits)


def d_loss_fake(backend, logits, dlogits):
    """-mean log(1 - D(G(z))). logits, dlogits (N, 1) -> (loss, mean D(G(z)))."""
    return backend.bce_with_logits(logits, 0.0, 1.0, dlogits)


def g_loss(backend, logits, dlogits, kind="non-saturating"):
    """The generator's loss on D's logits for fakes. logits, dlogits (N, 1) -> (loss, mean D(G(z)))."""
    check_choice("generator loss", kind, GENERATOR_LOSSES)
    if kind == "non-saturating":
        return backend.bce_with_logits(logits, 1.0, 1.0, dlogits)
    return backend.bce_with_logits(logits, 0.0, -1.0, dlogits)  # minimax: log(1 - D) = -BCE(target 0)
