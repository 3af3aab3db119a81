"""The vocabulary padding kept at -inf in the masked-LM logits changes no loss, count or gradient."""

import torch
import torch.nn.functional as F

from bert_pretrain.batch import IGNORE_LABEL
from bert_pretrain.model import pretraining_loss


def test_padding_columns_at_minus_infinity_change_nothing():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 40, generator=generator, dtype=torch.float64)
    logits[:, 37:] = float("-inf")  # vocabulary padding
    labels = torch.randint(0, 37, (12,), generator=generator)
    labels[[2, 7]] = IGNORE_LABEL
    nsp_logits, nsp_labels = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])

    fast_input = logits.clone().requires_grad_()
    out = pretraining_loss(fast_input, labels, nsp_logits, nsp_labels)
    out.loss.backward()

    plain_input = logits[:, :37].clone().requires_grad_()
    expected = F.cross_entropy(plain_input, labels, ignore_index=IGNORE_LABEL, reduction="sum")
    (expected / 10 + F.cross_entropy(nsp_logits, nsp_labels)).backward()
    torch.testing.assert_close(out.mlm_loss_sum, expected.detach().float(), rtol=1e-6, atol=1e-6)
    assert out.mlm_count == 10
    assert out.mlm_correct == ((plain_input.argmax(-1) == labels) & (labels != IGNORE_LABEL)).sum()
    torch.testing.assert_close(fast_input.grad[:, :37], plain_input.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(fast_input.grad[:, 37:], torch.zeros(12, 3, dtype=torch.float64))

