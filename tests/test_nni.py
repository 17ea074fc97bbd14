"""NNI's pruners, quantizers and distiller as search choices, on the MLP and CNN teachers.

Real NNI 3.0 on real torch: masks as asked, units removed as NNI chose them, quantized weights
on the stored grid, the layerwise loss really applied, and refusal when NNI does not import.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import autocompress
from autocompress.config import FinetuneConfig, MeasureConfig, study_from_dict
from autocompress.measure import pack_model, stored_bits, stored_bytes
from autocompress.packing import BITS_ATTRIBUTE, pack_state_dict, qmax, unpack_state_dict
from autocompress.plan import Plan
from autocompress.tasks import Task
from autocompress.techniques import PIPELINE, distill, providers, prune, student
from autocompress.techniques.common import Context, weight_layers
from autocompress.techniques.quantize import levels_per_channel
from autocompress.trial import TeacherOutputs, run_trial

pytest.importorskip("nni", reason="NNI is the nni extra (make install includes it)")
TEACHERS = ["mlp_teacher", "cnn_teacher"]
adapter = providers.load("nni")  # the provider's module, through the registry


def ctx(teacher, digits, **kw) -> Context:
    return Context(teacher=teacher, train_x=digits.train.x, train_y=digits.train.y,
                   example_input=digits.train.x[:1], **kw)


def trial(teacher, digits, choices: dict, *, epochs: int = 2):
    task = Task("digits", teacher, digits.train, digits.val, digits.test)
    return run_trial(Plan(choices, seed=1), task,
                     teacher_outputs=TeacherOutputs.of(teacher, digits.train.x),
                     finetune=FinetuneConfig(epochs=epochs),
                     measure=MeasureConfig(runtime="torch", repeats=3, warmup=1))


@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_level_masks_have_the_asked_sparsity_in_every_layer(request, digits, teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    plan = Plan({"prune.ratio": 0.6, "prune.criterion": "nni.level"})
    model = prune.apply(copy.deepcopy(teacher), plan, ctx(teacher, digits))
    for _, layer in weight_layers(model):  # element-wise: the last layer too
        zeros = int((layer.weight == 0).sum())
        assert abs(zeros - 0.6 * layer.weight.numel()) <= 1


@pytest.mark.parametrize("teacher_name", TEACHERS)
@pytest.mark.parametrize("method", ["nni.l1", "nni.l2", "nni.fpgm", "nni.taylor"])
def test_channel_pruners_zero_whole_units_and_spare_the_outputs(request, digits, teacher_name,
                                                                method):
    teacher = request.getfixturevalue(teacher_name)
    plan = Plan({"prune.ratio": 0.5, "prune.criterion": method})
    model = prune.apply(copy.deepcopy(teacher), plan, ctx(teacher, digits))
    layers = weight_layers(model)
    for _, layer in layers[:-1]:
        rows = layer.weight.detach().flatten(1)
        dead = int((rows == 0).all(dim=1).sum())
        assert dead == len(rows) // 2  # exactly half the units, each zeroed whole
        assert int((rows == 0).sum()) == dead * rows.shape[1]
    assert not (layers[-1][1].weight == 0).any()  # no class is silenced


@pytest.mark.parametrize("teacher_name", TEACHERS)
def test_structured_removal_takes_exactly_the_units_nni_zeroed(request, digits, teacher_name):
    teacher = request.getfixturevalue(teacher_name)
    c = ctx(teacher, digits)
    # NNI's L1-norm ranking equals ours: the same units go, so the same model comes out
    ours = prune.apply(copy.deepcopy(teacher), Plan({"prune.ratio": 0.5, "prune.kind":
                                                     "structured", "prune.criterion": "l1"}), c)
    by_nni = prune.apply(copy.deepcopy(teacher), Plan({"prune.ratio": 0.5, "prune.kind":
                                                       "structured",
                                                       "prune.criterion": "nni.l1"}), c)
    for (_, a), (_, b) in zip(weight_layers(ours), weight_layers(by_nni), strict=True):
        assert torch.equal(a.weight, b.weight)
    # FPGM ranks differently, and its zeroed units are the ones removed: the pruned model
    # computes what the NNI-masked model computes
    plan = Plan({"prune.ratio": 0.5, "prune.kind": "structured", "prune.criterion": "nni.fpgm"})
    masked = prune.apply(copy.deepcopy(teacher), Plan({"prune.ratio": 0.5,
                                                       "prune.criterion": "nni.fpgm"}), c)
    removed = prune.apply(copy.deepcopy(teacher), plan, c)
    for (_, before), (_, after) in zip(weight_layers(teacher)[:-1], weight_layers(removed)[:-1],
                                       strict=True):
        assert after.weight.shape[0] == before.weight.shape[0] - before.weight.shape[0] // 2
    with torch.no_grad():  # NNI masks a dead unit's bias too; our masks leave biases alone
        for _, layer in weight_layers(masked)[:-1]:
            layer.bias[(layer.weight.flatten(1) == 0).all(dim=1)] = 0.0
    x = digits.val.x[:64]
    with torch.no_grad():
        torch.testing.assert_close(removed.eval()(x), masked.eval()(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("teacher_name", TEACHERS)
@pytest.mark.parametrize("mode", ["nni.qat", "nni.lsq"])
def test_nni_quantizers_leave_weights_on_the_stored_grid(request, digits, teacher_name, mode):
    teacher = request.getfixturevalue(teacher_name)
    result = trial(teacher, digits, {"quantize.bits": 4, "quantize.mode": mode,
                                     "prune.ratio": 0.5, "prune.criterion": "nni.level"})
    assert result.ok, result.reason
    assert result.metrics["accuracy"] > 0.5  # ten classes: chance is 0.1
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)  # masks kept while training
    assert result.metrics["memory_bytes"] == len(result.packed)  # the real stored form


@pytest.mark.parametrize("mode", ["nni.qat", "nni.lsq"])
def test_nni_quantized_layers_hold_at_most_their_levels(mlp_teacher, digits, mode):
    plan = Plan({"quantize.bits": 3, "quantize.mode": mode, "prune.ratio": 0.3}, seed=2)
    c = ctx(mlp_teacher, digits, teacher_logits=TeacherOutputs.of(mlp_teacher,
                                                                  digits.train.x).logits,
            epochs=1)
    model = mlp_teacher
    for technique in PIPELINE:
        model = technique.apply(model, plan, c)
    for _, layer in weight_layers(model):
        assert getattr(layer, BITS_ATTRIBUTE) == 3
        assert levels_per_channel(layer.weight) <= 2 * qmax(3) + 1  # 7 symmetric levels
        rows = layer.weight.detach().flatten(1)
        # on the per-channel grid the packer stores: codes are whole numbers
        scale = rows.abs().amax(dim=1, keepdim=True) / qmax(3)
        codes = rows / torch.where(scale > 0, scale, torch.ones_like(scale))
        torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert prune.sparsity(model) >= 0.3  # pruned stay pruned; rounding adds some zeros
    blob = pack_model(model)
    names = [f"{name}.weight" for name, _ in weight_layers(model)]
    assert stored_bits(model) == dict.fromkeys(names, 3)  # every weight stored as 3-bit codes
    assert len(blob) == stored_bytes(model)  # the size a trial reports is this byte string's
    state, restored = model.state_dict(), unpack_state_dict(blob)
    for name in names:  # the stored codes decode to the trained weights, zeros exactly
        torch.testing.assert_close(restored[name], state[name], rtol=1e-5, atol=1e-6)
        assert torch.equal(restored[name] == 0, state[name] == 0)
    assert len(blob) < len(pack_state_dict(state, dict.fromkeys(names, 8)))  # 3 bits, not 8


def test_layerwise_distillation_pulls_hidden_states_towards_the_teachers(mlp_teacher, digits):
    # a re-initialised student of the teacher's shape: every hidden layer lines up
    teacher_logits = TeacherOutputs.of(mlp_teacher, digits.train.x).logits
    hidden = [name for name, _ in weight_layers(mlp_teacher)][:-1]
    distances = {}
    for weight in (0.0, 5.0):
        plan = Plan({"student.migrate": False, "distill.method": "nni.layerwise",
                     "distill.layer_weight": weight, "distill.alpha": 0.0}, seed=4)
        c = ctx(mlp_teacher, digits, teacher_logits=teacher_logits, epochs=4)
        model = distill.apply(student.apply(mlp_teacher, plan, c), plan, c)
        assert adapter.matched_layers(model, mlp_teacher, digits.train.x[:1]) == hidden
        first = hidden[0]  # the first hidden layer sees the flattened image in both nets
        with torch.no_grad():
            mine = dict(model.named_modules())[first](digits.val.x.flatten(1))
            theirs = dict(mlp_teacher.named_modules())[first](digits.val.x.flatten(1))
        distances[weight] = float(F.mse_loss(mine, theirs))
    assert distances[5.0] < 0.75 * distances[0.0], distances


def test_a_narrow_student_is_matched_on_its_logits_only(mlp_teacher, digits):
    c = ctx(mlp_teacher, digits)
    narrow = student.apply(mlp_teacher, Plan({"student.width": 0.5}), c)
    last = weight_layers(narrow)[-1][0]
    assert adapter.matched_layers(narrow, mlp_teacher, digits.train.x[:1]) == [last]


def test_nni_choices_run_in_a_real_search_and_reach_the_report(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(textwrap.dedent("""
        prune:
          ratio: {low: 0.3, high: 0.8}
          criterion: [nni.level, nni.fpgm, nni.taylor]
          kind: [unstructured, structured]
        quantize: {bits: [4, 8], mode: [nni.qat, nni.lsq]}
        distill: {method: [kd, nni.layerwise]}
    """))
    config = study_from_dict({
        "name": "nni",
        "task": {"dataset": "digits", "teacher": "lenet300", "teacher_epochs": 8},
        "space": str(space),
        "measure": {"batch_size": 1, "threads": 1, "warmup": 1, "repeats": 3,
                    "runtime": "torch"},
        "finetune": {"epochs": 1}, "trials": 6, "sampler": "random", "seed": 5,
    })
    outcome = autocompress.run_study(config, out_dir=tmp_path / "out", progress=None)
    assert all(r.ok for r in outcome.results), [r.reason for r in outcome.results]
    trials = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert set(trials["plan.prune.criterion"]) <= {"nni.level", "nni.fpgm", "nni.taylor"}
    assert trials["plan.quantize.mode"].str.startswith("nni.").all()
    report = (tmp_path / "out" / "report.html").read_text()
    assert "nni." in report
    assert outcome.front  # feasible members exist (no budget beyond the default)


NO_NNI = textwrap.dedent("""
    import sys
    sys.modules["nni"] = None  # what an install without the nni extra looks like
    {body}
""")


def run_without_nni(body: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_NNI.format(body=body), *args],
                          capture_output=True, text=True, timeout=120)


def test_without_nni_a_space_asking_for_it_is_refused_in_one_line(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("prune:\n  ratio: 0.5\n  criterion: [magnitude, nni.fpgm]\n")
    study = tmp_path / "study.yaml"
    study.write_text(f"name: x\ntask: {{dataset: digits, teacher: lenet300}}\nspace: {space}\n"
                     "trials: 2\n")
    done = run_without_nni("from autocompress.cli import main; sys.exit(main(sys.argv[1:]))",
                           "search", str(study), "--out", str(tmp_path / "out"))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "prune.criterion" in lines[0] and "autocompress[nni]" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing half-written
    # our own choices still work without NNI
    ok = run_without_nni(textwrap.dedent("""
        from autocompress import SearchSpace
        SearchSpace.from_dict({"prune": {"criterion": ["magnitude", "taylor"]}})
        print("ok")
    """))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
