"""A calibration walk stopped between blocks goes on from its checkpoint and saves exactly what
an uninterrupted walk saves (codes, scales, activation scales, rewritten norms, pruned weights)."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from services.common.calibration.walk_checkpoint import WalkCheckpoints, WalkState
from services.common.contract.engine_api import Checkpoints, ProgressReporter, StageCancelled
from services.pruner.configs import SparseGptConfig
from services.pruner.engine import METHODS as PRUNE_METHODS
from services.quantizer.configs import AutoRoundConfig, AwqConfig, GptqConfig, QatConfig, W8A8Config
from services.quantizer.engine import METHODS as QUANT_METHODS

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 64}


class FolderCheckpoints(Checkpoints):
    """The stage's checkpoint kept in a folder (the object store's part in the mesh)."""

    every_s = 0.0  # save after every block

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.saves: list[int] = []

    def latest(self, into: Path) -> Path | None:
        if not self.folder.exists():
            return None
        shutil.copytree(self.folder, into)
        return into

    def save(self, folder: Path, step: int) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        shutil.copytree(folder, self.folder)
        self.saves.append(step)


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(path))
    return out


CASES = {
    "gptq": (QUANT_METHODS, "gptq", GptqConfig(group_size=32, **CALIBRATION)),
    "awq": (QUANT_METHODS, "awq", AwqConfig(group_size=32, **CALIBRATION)),  # rewrites norms (scales folded)
    "w8a8": (QUANT_METHODS, "w8a8", W8A8Config(activations="static", **CALIBRATION)),  # activation scales
    # The 4-bit tied table, rounded on the head's inputs after the (resumed) walk's last block.
    "gptq-table4": (QUANT_METHODS, "gptq", GptqConfig(group_size=32, embedding_bits=4, **CALIBRATION)),
    # Training each block, its grid's scales too.
    "qat-learned-scales": (QUANT_METHODS, "qat", QatConfig(group_size=32, steps_per_block=3, scale_learning_rate=0.01,
                                                            embedding_bits=4, **CALIBRATION)),
    # Training towards the float model's hidden states: their stream resumes with the walk.
    "qat-model-targets": (QUANT_METHODS, "qat", QatConfig(group_size=32, steps_per_block=3, targets="model",
                                                           **CALIBRATION)),
    # Learned rounding: its offsets and gains train per block on the resumed walk's inputs and targets.
    "autoround": (QUANT_METHODS, "autoround", AutoRoundConfig(group_size=32, steps_per_block=3, **CALIBRATION)),
    "sparsegpt": (PRUNE_METHODS, "sparsegpt", SparseGptConfig(sparsity=0.5, **CALIBRATION)),  # float weights out
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_walk_stopped_after_a_block_resumes_there_and_saves_what_an_uninterrupted_walk_saves(
        case, tiny_llama_dir, tmp_path):
    methods, method, config = CASES[case]
    methods[method].run(config, tiny_llama_dir, tmp_path / "whole", ProgressReporter())

    store = FolderCheckpoints(tmp_path / "ckpt")
    first = ProgressReporter(checkpoints=store)

    def stop_in_the_second_block(progress):
        if progress.metrics.get("block") == 1:
            first.cancelled.set()

    first.sink = stop_in_the_second_block
    with pytest.raises(StageCancelled):
        methods[method].run(config, tiny_llama_dir, tmp_path / "stopped", first)
    assert store.saves == [1]  # after block 0; never after the last block

    seen = []
    result = methods[method].run(config, tiny_llama_dir, tmp_path / "resumed",
                                 ProgressReporter(sink=seen.append, checkpoints=store))
    assert any(p.message.endswith("resumed from the checkpoint after block 1 of 2") for p in seen)
    assert result.metrics["resumed_from_block"] == 1
    whole, resumed = tensors(tmp_path / "whole"), tensors(tmp_path / "resumed")
    assert whole.keys() == resumed.keys()
    different = [k for k in whole if not torch.equal(whole[k], resumed[k])]
    assert not different, different


def test_a_checkpoint_of_another_walk_is_not_taken(tmp_path):
    store = FolderCheckpoints(tmp_path / "ckpt")
    hidden = [torch.randn(2, 8, 4)]
    WalkCheckpoints(store).save(WalkState(1, hidden, {"a": torch.ones(2)}, {"a": {"loss": 0.5}}), blocks=3)

    restored = WalkCheckpoints(store).restore(3, [torch.zeros(2, 8, 4)])
    assert restored.next_block == 1 and torch.equal(restored.hidden[0], hidden[0])
    assert restored.figures == {"a": {"loss": 0.5}} and torch.equal(restored.results["a"], torch.ones(2))
    # Another walk of the same stage (the next round of a gradual pruning), other calibration
    # windows or another model: start over.
    assert WalkCheckpoints(store, walk="step 2/2").restore(3, [torch.zeros(2, 8, 4)]) is None
    assert WalkCheckpoints(store).restore(3, [torch.zeros(2, 16, 4)]) is None
    assert WalkCheckpoints(store).restore(4, [torch.zeros(2, 8, 4)]) is None
    # A walk that keeps the float model's stream cannot go on from one that did not, nor the reverse.
    assert WalkCheckpoints(store).restore(3, [torch.zeros(2, 8, 4)], with_float_stream=True) is None
    WalkCheckpoints(store).save(WalkState(1, hidden, float_hidden=[hidden[0] + 1]), blocks=3)
    assert WalkCheckpoints(store).restore(3, [torch.zeros(2, 8, 4)]) is None
    assert torch.equal(WalkCheckpoints(store).restore(3, [torch.zeros(2, 8, 4)], True).float_hidden[0], hidden[0] + 1)
    # A training checkpoint under the same id is not a walk's.
    shutil.rmtree(store.folder)
    store.folder.mkdir()
    (store.folder / "training.pt").write_bytes(b"x")
    assert WalkCheckpoints(store).restore(3, [torch.zeros(2, 8, 4)]) is None


def test_saves_are_spaced_by_ten_times_their_own_duration(tmp_path):
    store = FolderCheckpoints(tmp_path / "ckpt")
    now = [0.0]

    class SlowStore(FolderCheckpoints):
        every_s = 5.0

        def save(self, folder, step):
            now[0] += 2.0  # a save that takes 2 s
            super().save(folder, step)

    walk = WalkCheckpoints(SlowStore(store.folder), clock=lambda: now[0])
    now[0] = 5.0
    assert walk.due()
    walk.save(WalkState(1, [torch.zeros(1)]), blocks=3)
    now[0] += 19.0
    assert not walk.due()  # 20 s after a 2 s save, not 5
    now[0] += 1.0
    assert walk.due()


def test_a_checkpoint_that_cannot_be_stored_does_not_stop_the_walk(tiny_llama_dir, tmp_path):
    class FullStore(FolderCheckpoints):
        def save(self, folder, step):
            self.saves.append(step)
            raise OSError("store full")

    store = FullStore(tmp_path / "ckpt")
    config = GptqConfig(group_size=32, **CALIBRATION)
    QUANT_METHODS["gptq"].run(config, tiny_llama_dir, tmp_path / "whole", ProgressReporter())
    QUANT_METHODS["gptq"].run(config, tiny_llama_dir, tmp_path / "unsaved", ProgressReporter(checkpoints=store))
    assert store.saves == [1]  # tried after block 0; the walk went on
    whole, unsaved = tensors(tmp_path / "whole"), tensors(tmp_path / "unsaved")
    assert all(torch.equal(whole[k], unsaved[k]) for k in whole)
