"""Losses against hand-computed values, GradCache gradient equivalence, 2-process gather equivalence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anna_embed.train.gradcache import gather_with_grad, grad_cache_backward
from anna_embed.train.losses import distill_kl, embedding_loss, group_scores, info_nce


def test_info_nce_hand_computed() -> None:
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = info_nce(scores, torch.tensor([0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # temperature divides the scores: 0.5 doubles the margin
    loss_t = info_nce(scores, torch.tensor([0, 1]), temperature=0.5)
    assert loss_t.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    # wrong target column: loss of the off-diagonal
    loss_w = info_nce(scores, torch.tensor([1, 0]), temperature=1.0)
    assert loss_w.item() == pytest.approx(math.log(1 + math.exp(1)), abs=1e-6)


def test_distill_kl_hand_computed_and_unknown_rows() -> None:
    nan = math.nan
    teacher = torch.tensor([[0.0, math.log(3.0)], [5.0, nan]])  # row 1: one score unknown
    student = torch.tensor([[0.0, 0.0], [0.3, -0.1]])
    expected_row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    only_first = distill_kl(student, teacher, student_temperature=1.0, teacher_temperature=1.0)
    assert only_first.item() == pytest.approx(expected_row0, abs=1e-6)  # averaged over the one kept row
    inf_row = torch.tensor([[0.0, math.log(3.0)], [float("inf"), 5.0]])  # any non-finite score drops a row
    got_inf = distill_kl(student, inf_row, student_temperature=1.0, teacher_temperature=1.0)
    assert got_inf.item() == pytest.approx(expected_row0, abs=1e-6)
    # teacher temperature 2 flattens the teacher: p_t = softmax([0, log(3)/2])
    s3 = math.sqrt(3.0)
    p = [1 / (1 + s3), s3 / (1 + s3)]
    expected_t2 = sum(pi * math.log(pi / 0.5) for pi in p)
    got = distill_kl(student[:1], teacher[:1], student_temperature=1.0, teacher_temperature=2.0)
    assert got.item() == pytest.approx(expected_t2, abs=1e-6)
    unknown = torch.full_like(teacher, nan)
    sg = student.clone().requires_grad_(True)
    none_kept = distill_kl(sg, unknown, student_temperature=1.0, teacher_temperature=1.0)
    assert none_kept.item() == 0.0
    none_kept.backward()
    assert sg.grad is not None and not sg.grad.any()  # no NaN reaches the gradient
    # identical distributions give zero
    same = distill_kl(teacher[:1] * 0.5, teacher[:1], student_temperature=0.5, teacher_temperature=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_embedding_loss_leaves_rows_with_unknown_teacher_scores_out_of_kl() -> None:
    # B = 2, G = 2, in-batch; documents [pos0, neg0, pos1, neg1]; student scores (tau_s = 1) q @ d.T:
    # [[1, 0, 0, 0], [0, 0, 1, 0]]. Row 1's negative has no teacher score (NaN): KL covers row 0 alone.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [2.0, math.nan]])
    kw = dict(group_size=2, in_batch=True, student_temperature=1.0, teacher_temperature=1.0, kl_weight=0.5)
    e = math.e
    kl_row0 = _kl([0.75, 0.25], [e / (e + 1), 1 / (e + 1)])  # own group [1, 0] vs teacher (3/4, 1/4)
    ce = -1 + math.log(e + 3)  # either row: the target scores 1, the three others 0
    qg = q.clone().requires_grad_(True)
    out = embedding_loss(qg, d, teacher_scores=teacher, **kw)
    assert out.kl.item() == pytest.approx(kl_row0, abs=1e-6)  # divided by 1 kept row, not 2
    assert out.contrastive.item() == pytest.approx(ce, abs=1e-6)  # InfoNCE still covers row 1
    assert out.loss.item() == pytest.approx(ce + 0.5 * kl_row0, abs=1e-6)
    out.loss.backward()
    assert torch.isfinite(qg.grad).all()
    # the unknown row contributes no gradient through KL: row 1's gradient equals InfoNCE's alone
    qc = q.clone().requires_grad_(True)
    embedding_loss(qc, d, **kw).loss.backward()
    assert torch.equal(qg.grad[1], qc.grad[1])
    # every row unknown: no KL at all
    unknown = embedding_loss(q, d, teacher_scores=torch.full((2, 2), math.nan), **kw)
    assert unknown.kl.item() == 0.0 and unknown.loss.item() == pytest.approx(ce, abs=1e-6)


def _reference_loss(q, d, group, in_batch, tau, exclude=None):
    """Loop-by-loop InfoNCE in plain Python floats (the oracle); skips ``exclude[i][j]`` candidates."""
    total = 0.0
    for i in range(q.shape[0]):
        cols = range(d.shape[0]) if in_batch else range(i * group, (i + 1) * group)
        kept = [j for j in cols if exclude is None or not exclude[i][j]]
        logits = {j: float(q[i] @ d[j]) / tau for j in kept}
        total += -logits[i * group] + math.log(sum(math.exp(x) for x in logits.values()))
    return total / q.shape[0]


@pytest.mark.parametrize("in_batch", [True, False])
def test_embedding_loss_matches_loop_oracle(in_batch: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(3, 5, generator=g), dim=-1)
    d = F.normalize(torch.randn(3 * 4, 5, generator=g), dim=-1)
    out = embedding_loss(q, d, group_size=4, in_batch=in_batch, student_temperature=0.1)
    assert out.loss.item() == pytest.approx(_reference_loss(q, d, 4, in_batch, 0.1), rel=1e-5)
    assert out.kl.item() == 0.0


def test_group_scores_geometry_and_offset() -> None:
    q = torch.eye(2, 3)
    d = torch.arange(18, dtype=torch.float32).view(6, 3)  # 3 groups of 2
    s = group_scores(q, d, 2, query_offset=1)  # queries own groups 1 and 2
    assert s.tolist() == [[d[2, 0].item(), d[3, 0].item()], [d[4, 1].item(), d[5, 1].item()]]


def test_kl_weight_adds_lambda_times_kl() -> None:
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(2, 4, generator=g), dim=-1)
    d = F.normalize(torch.randn(2 * 3, 4, generator=g), dim=-1)
    teacher = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.5, -1.0]])
    base = embedding_loss(q, d, group_size=3, in_batch=True, student_temperature=0.05)
    out = embedding_loss(
        q,
        d,
        group_size=3,
        in_batch=True,
        student_temperature=0.05,
        teacher_scores=teacher,
        teacher_temperature=0.5,
        kl_weight=0.7,
    )
    kl = distill_kl(group_scores(q, d, 3), teacher, student_temperature=0.05, teacher_temperature=0.5)
    assert out.kl.item() == pytest.approx(kl.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.7 * kl.item(), rel=1e-6)


class _TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.drop = torch.nn.Dropout(0.3)
        self.proj = torch.nn.Linear(16, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # ids [b, L] -> [b, 8]
        return F.normalize(self.proj(self.drop(self.emb(ids).mean(1))), dim=-1)


def test_grad_cache_matches_plain_gradients() -> None:
    torch.manual_seed(0)
    model = _TinyEncoder()
    q_ids = torch.randint(0, 50, (6, 5))
    d_ids = torch.randint(0, 50, (12, 7))
    teacher = torch.randn(6, 2)

    def loss_fn(q, d):
        return embedding_loss(
            q,
            d,
            group_size=2,
            in_batch=True,
            student_temperature=0.05,
            teacher_scores=teacher,
            teacher_temperature=1.0,
            kl_weight=0.5,
        )

    # plain: one forward per side, with the same RNG replay order as GradCache uses (chunks in order)
    torch.manual_seed(123)
    q_parts = [model(c) for c in q_ids.split(2)]
    d_parts = [model(c) for c in d_ids.split(3)]
    plain = loss_fn(torch.cat(q_parts), torch.cat(d_parts))
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    torch.manual_seed(123)
    cached = grad_cache_backward(model, list(q_ids.split(2)), list(d_ids.split(3)), loss_fn)
    assert cached.loss.item() == pytest.approx(plain.loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain_grads[name], atol=1e-6), name


def test_grad_cache_routes_every_backward_through_the_given_callable() -> None:
    """A fake fp16 loss scaler (multiply by S, like ``GradScaler.scale``) must see every parameter backward.

    After dividing by S (what ``clip_grad_norm_`` / the optimizer step do) the gradients equal the plain
    ones: scaled exactly once. Bypassing the callable leaves them S times too small; also scaling the
    cached embedding gradients would leave them S times too large.
    """
    scale = 2.0**10  # a power of two: scaling and unscaling are exact
    torch.manual_seed(0)
    model = _TinyEncoder()
    q_ids, d_ids = torch.randint(0, 50, (6, 5)), torch.randint(0, 50, (12, 7))

    def loss_fn(q, d):
        return embedding_loss(q, d, group_size=2, in_batch=True, student_temperature=0.05)

    torch.manual_seed(123)
    q_plain, d_plain = [model(c) for c in q_ids.split(2)], [model(c) for c in d_ids.split(3)]
    plain = loss_fn(torch.cat(q_plain), torch.cat(d_plain))
    plain.loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    seen: list[torch.Tensor] = []

    def scaled_backward(loss: torch.Tensor) -> None:
        seen.append(loss.detach())
        (loss * scale).backward()

    torch.manual_seed(123)
    grad_cache_backward(model, list(q_ids.split(2)), list(d_ids.split(3)), loss_fn, backward=scaled_backward)
    assert len(seen) == 3 + 4 and all(s.ndim == 0 for s in seen)  # one scalar per re-embedded chunk
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad / scale, plain_grads[name], atol=1e-6), name


def _gather_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 4))
    x_q, x_d = torch.randn(4, 6), torch.randn(4 * 3, 6)  # global batch: 4 queries, groups of 3
    b = 4 // world
    q = F.normalize(x_q[rank * b : (rank + 1) * b] @ weight, dim=-1)
    d = F.normalize(x_d[rank * b * 3 : (rank + 1) * b * 3] @ weight, dim=-1)
    out = embedding_loss(
        q, gather_with_grad(d), group_size=3, in_batch=True, student_temperature=0.1, query_offset=rank * b
    )
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    grad = weight.grad.clone()
    dist.all_reduce(grad)  # DDP averages: sum / world
    if rank == 0:
        torch.save({"loss": loss / world, "grad": grad / world}, result_file)
    dist.destroy_process_group()


def test_two_process_gather_equals_single_process(tmp_path) -> None:
    import torch.multiprocessing as mp

    result = tmp_path / "result.pt"
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    got = torch.load(result)

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(6, 4))
    x_q, x_d = torch.randn(4, 6), torch.randn(4 * 3, 6)
    out = embedding_loss(
        F.normalize(x_q @ weight, dim=-1),
        F.normalize(x_d @ weight, dim=-1),
        group_size=3,
        in_batch=True,
        student_temperature=0.1,
    )
    out.loss.backward()
    assert got["loss"].item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert torch.allclose(got["grad"], weight.grad, atol=1e-6)


def test_gather_is_identity_without_distributed() -> None:
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


@pytest.mark.parametrize("in_batch", [True, False])
def test_copies_of_own_positive_leave_infonce_and_kl(in_batch: bool) -> None:
    # Issue 10, defect 3: query 0's positive text also sits in query 1's group (as a mined negative)
    # and in its own group (as its negative): neither copy may act as query 0's negative.
    g = torch.Generator().manual_seed(3)
    q = F.normalize(torch.randn(2, 6, generator=g), dim=-1)
    d = F.normalize(torch.randn(2 * 3, 6, generator=g), dim=-1)
    d[2] = d[0]  # query 0's group: [pos, neg, copy of pos]
    d[4] = d[0]  # query 1's group: [pos, copy of query 0's pos, neg]
    own = torch.zeros(2, 6, dtype=torch.bool)
    own[0, 2] = own[0, 4] = True
    own[0, 0] = True  # the target is never excluded, even when marked
    exclude = own.clone()
    exclude[0, 0] = False
    out = embedding_loss(q, d, group_size=3, in_batch=in_batch, student_temperature=0.1, own_positive=own)
    assert out.contrastive.item() == pytest.approx(_reference_loss(q, d, 3, in_batch, 0.1, exclude), rel=1e-5)
    plain = embedding_loss(q, d, group_size=3, in_batch=in_batch, student_temperature=0.1)
    assert plain.contrastive.item() > out.contrastive.item()  # the copy capped the plain loss
    # KL over the group: the excluded column leaves both distributions (row 0: columns 0 and 1 remain)
    teacher = torch.tensor([[2.0, 1.0, 5.0], [1.0, 0.0, -1.0]])
    kl_out = embedding_loss(
        q,
        d,
        group_size=3,
        in_batch=in_batch,
        student_temperature=0.1,
        teacher_scores=teacher,
        teacher_temperature=1.0,
        kl_weight=1.0,
        own_positive=own,
    )
    s = group_scores(q, d, 3)
    row0 = distill_kl(s[:1, :2], teacher[:1, :2], student_temperature=0.1, teacher_temperature=1.0)
    row1 = distill_kl(s[1:], teacher[1:], student_temperature=0.1, teacher_temperature=1.0)
    assert kl_out.kl.item() == pytest.approx((row0.item() + row1.item()) / 2, rel=1e-5)
    # gradients stay finite through the -inf entries
    qg = q.clone().requires_grad_(True)
    loss = embedding_loss(
        qg,
        d,
        group_size=3,
        in_batch=in_batch,
        student_temperature=0.1,
        teacher_scores=teacher,
        kl_weight=1.0,
        own_positive=own,
    ).loss
    loss.backward()
    assert torch.isfinite(qg.grad).all()


# ----------------------------------------------------------------------------- batch-scope KL (issue 11)


def test_distill_kl_over_a_batch_row_hand_computed_with_exclusion() -> None:
    # one query, three in-batch candidates, the third a copy of its own positive (excluded from both sides);
    # kept: teacher (log 3, 0) -> (3/4, 1/4), student (0, 0) -> (1/2, 1/2)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    student = torch.tensor([[0.0, 0.0, 5.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0, 9.0]])
    exclude = torch.tensor([[False, False, True]])
    got = distill_kl(student, teacher, student_temperature=1.0, teacher_temperature=1.0, exclude=exclude)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    unmasked = distill_kl(student, teacher, student_temperature=1.0, teacher_temperature=1.0)
    assert abs(unmasked.item() - expected) > 0.1  # unmasked, the copy would take most of both distributions


def _kl(p_t: list[float], p_s: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))


def test_embedding_loss_batch_scope_covers_every_candidate_with_infonce_masks() -> None:
    # B = 2 queries, G = 2: documents [pos0, neg0, pos1, neg1]; neg1 is a copy of query 0's positive.
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    d = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])  # student scores q @ d.T:
    # [[1, 0, 0, 1], [0, 1, 1, 0]]
    own = torch.tensor([[False, False, False, True], [False, False, False, False]])
    teacher_batch = torch.tensor([[math.log(3.0), 0.0, 0.0, 7.0], [0.0, 0.0, math.log(3.0), 0.0]])
    e = math.e
    # row 0 (column 3 excluded): p_t = (3, 1, 1) / 5, p_s = (e, 1, 1) / (e + 2)
    row0 = _kl([0.6, 0.2, 0.2], [e / (e + 2), 1 / (e + 2), 1 / (e + 2)])
    # row 1 (all four): p_t = (1, 1, 3, 1) / 6, p_s = (1, e, e, 1) / (2 + 2e)
    z = 2 + 2 * e
    row1 = _kl([1 / 6, 1 / 6, 1 / 2, 1 / 6], [1 / z, e / z, e / z, 1 / z])
    kw = dict(group_size=2, student_temperature=1.0, teacher_temperature=1.0, kl_weight=1.0, own_positive=own)
    out = embedding_loss(q, d, in_batch=True, teacher_batch_scores=teacher_batch, **kw)
    assert out.kl.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert out.loss.item() == pytest.approx(out.contrastive.item() + out.kl.item(), abs=1e-6)
    # the group scope with the same teacher's group columns covers only [pos, neg] of each query
    group_teacher = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])
    group = embedding_loss(q, d, in_batch=True, teacher_scores=group_teacher, **kw)
    assert group.kl.item() == pytest.approx(_kl([0.75, 0.25], [e / (e + 1), 1 / (e + 1)]), abs=1e-6)
    assert group.contrastive.item() == pytest.approx(out.contrastive.item())  # InfoNCE is unchanged
    # group-only batches keep the group KL: the batch matrix is ignored
    group_only = embedding_loss(
        q, d, in_batch=False, teacher_scores=group_teacher, teacher_batch_scores=teacher_batch, **kw
    )
    plain_group = embedding_loss(q, d, in_batch=False, teacher_scores=group_teacher, **kw)
    assert group_only.kl.item() == pytest.approx(plain_group.kl.item(), abs=1e-7)
    # gradients stay finite through the excluded (-inf) column
    qg = q.clone().requires_grad_(True)
    embedding_loss(qg, d, in_batch=True, teacher_batch_scores=teacher_batch, **kw).loss.backward()
    assert torch.isfinite(qg.grad).all()
