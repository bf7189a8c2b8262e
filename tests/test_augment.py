"""torchvision v2 augmentation presets, MixUp/CutMix and the soft-target losses."""
from __future__ import annotations

import pytest
import torch

from training import augment, losses
from training.augment import AUGMENTS, BatchMix, create_augment, marginals
from training.soft_targets import SoftAware, check_soft_criterion, soft_cross_entropy


def test_every_preset_is_a_pure_function_of_its_generator_and_leaves_the_global_rng_alone():
    img = torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8)
    assert {"none", "light", "medium", "strong", "v2_light", "v2_medium", "v2_strong", "colour", "trivial", "randaug"} <= set(AUGMENTS)
    for name, aug in AUGMENTS.items():
        torch.manual_seed(123)
        before = torch.get_rng_state()
        a = aug(img, torch.Generator().manual_seed(5))
        assert torch.equal(torch.get_rng_state(), before), f"{name} must not move torch's global RNG"
        b = aug(img, torch.Generator().manual_seed(5))
        assert a.dtype == torch.uint8 and a.shape == img.shape, (name, a.dtype, a.shape)
        assert torch.equal(a, b), f"{name}: same seed must give the same pixels"
        if name != "none":
            outs = [aug(img, torch.Generator().manual_seed(s)) for s in range(6)]
            assert any(not torch.equal(o, img) for o in outs), f"{name} never changed the image"
            assert any(not torch.equal(o, outs[0]) for o in outs[1:]), f"{name} must depend on the seed"


def test_unknown_preset_and_help_lists_presets():
    with pytest.raises(ValueError, match="unknown augmentation 'wild'; expected one of"):
        create_augment("wild")
    from training.cli import build_parser
    text = build_parser().format_help()
    for name in augment.PRESETS:
        assert f"{name}:" in text.replace("\n", " "), f"--help must list preset {name}"


def test_mixed_targets_sum_to_one_and_are_a_function_of_seed_epoch_step():
    x = torch.randint(0, 256, (8, 32, 24, 3), dtype=torch.uint8)
    y = torch.arange(8) % 18
    for mix in (BatchMix(mixup=0.4), BatchMix(cutmix=1.0), BatchMix(mixup=0.4, cutmix=1.0)):
        img, q = mix(x, y, epoch=2, step=3)
        img2, q2 = mix(x, y, epoch=2, step=3)
        assert torch.equal(img, img2) and torch.equal(q, q2), "same (seed, epoch, step) must give the same batch"
        assert q.shape == (8, 18) and torch.allclose(q.sum(1), torch.ones(8)), q.sum(1)
        assert (q.max(1).values < 1).any(), f"{mix}: the batch was not mixed"
        assert img.shape == x.shape and img.dtype == torch.float32
    img, q = BatchMix(mixup=0.4, prob=0.0)(x, y, 0, 0)
    assert torch.equal(img, x.float()) and torch.equal(q, torch.nn.functional.one_hot(y, 18).float())
    with pytest.raises(ValueError, match="--mix-prob must be in"):
        BatchMix(mixup=0.2, prob=1.5)


@pytest.mark.parametrize("spec", ["cross_entropy", "label_smoothing", "focal", "f1", "focal:0.6,f1:0.4",
                                  "label_smoothing:0.5,cross_entropy:0.5"])
@pytest.mark.parametrize("weighted", [False, True])
def test_soft_target_losses_equal_their_hard_values_on_one_hot(spec, weighted):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 18, generator=g) * 3
    target = torch.randint(0, 18, (16,), generator=g)
    w = losses.balanced_class_weights(target) + 0.5 if weighted else None
    crit = SoftAware(losses.create_criterion(spec, gamma=1.5, smoothing=0.2, class_weights=w))
    hard = crit(logits, target)
    soft = crit(logits, torch.nn.functional.one_hot(target, 18).float())
    torch.testing.assert_close(soft, hard, rtol=1e-5, atol=1e-6, msg=f"{spec} weighted={weighted}")


def test_the_multi_head_gets_consistent_soft_targets():
    """Soft CE on the joint log-probabilities = sum of per-head soft CEs on the marginals."""
    g = torch.Generator().manual_seed(1)
    heads = {k: torch.randn(8, n, generator=g) for k, n in (("mask", 3), ("gender", 2), ("age", 3))}
    lm, lg, la = (torch.log_softmax(heads[k], 1) for k in ("mask", "gender", "age"))
    joint = (lm[:, :, None, None] + lg[:, None, :, None] + la[:, None, None, :]).reshape(8, 18)
    _, q = BatchMix(mixup=1.0)(torch.zeros(8, 4, 4, 3, dtype=torch.uint8), torch.randint(0, 18, (8,), generator=g), 0, 0)
    per_head = sum(soft_cross_entropy(heads[k], m) for k, m in marginals(q).items())
    torch.testing.assert_close(soft_cross_entropy(joint, q), per_head)
    assert all(torch.allclose(m.sum(1), torch.ones(8)) for m in marginals(q).values())


def test_mixup_with_a_loss_without_soft_form_is_refused(monkeypatch, tmp_path):
    check_soft_criterion("focal:0.6,f1:0.4")
    monkeypatch.setitem(losses.LOSSES, "hinge", losses.CrossEntropy)
    with pytest.raises(ValueError, match="need soft targets, which loss hinge cannot take"):
        check_soft_criterion("hinge:0.5,f1:0.5")
    from training.cli import main
    args = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    assert main([*args, "--mixup", "0.4", "--criterion", "hinge"]) == 2
    assert main([*args, "--crop", "box:0.9,0,0.1,1"]) == 2
    assert main([*args, "--aspect", "squash"]) == 2


@pytest.mark.slow
def test_training_with_mixup_and_cutmix_runs_and_resumes_exactly(synth_root, tmp_path):
    from training.cli import main
    common = ["--data-dir", str(synth_root / "train"), "--model", "tiny_cnn", "--batch-size", "16", "--resize", "32",
              "24", "--workers", "0", "--no-progress", "--epochs", "2", "--mixup", "0.4", "--cutmix", "1.0",
              "--mix-prob", "0.8", "--criterion", "focal:0.5,f1:0.5", "--augment", "colour"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--stop-after", "1"]) == 0
    assert main(["--resume", str(tmp_path / "b" / "last.pt"), "--no-progress", "--workers", "0"]) == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed mixed run must end with the same weights"
