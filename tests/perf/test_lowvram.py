"""--lowvram block streaming (runtime.devices.stream_blocks), with the meta device standing in for a GPU.

What can be checked without a GPU: which weights sit on the device when (only the running block and the
prefetched next one), that nothing is copied back (the CPU tensors are the very same storage afterwards),
that an exception mid-forward leaves every block on its CPU weights, and that the result on the CPU equals
the plain forward. The side-stream overlap itself needs CUDA (benchmarks/gpu_bench.py).
"""

from __future__ import annotations

import pytest
import torch

from sd35.models.configs import TINY_MMDITX
from sd35.models.mmditx import MMDiTX
from sd35.nn.init import randomize_
from sd35.runtime import devices
from sd35.runtime.devices import DevicePolicy, stream_blocks

META = DevicePolicy(device=torch.device("meta"))  # no offload on exit: meta tensors cannot be copied out


@pytest.fixture()
def model() -> MMDiTX:
    return randomize_(MMDiTX(TINY_MMDITX), seed=0).eval()


def _inputs(device: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([500.0, 500.0])
    pooled, context = torch.randn(2, 320, generator=g), torch.randn(2, 7, 384, generator=g)
    return tuple(v.to(device) for v in (x, t, pooled, context))


def _on(block: torch.nn.Module) -> set[str]:
    return {p.device.type for p in block.parameters()}


def test_only_the_running_block_holds_device_weights_and_the_next_is_prefetched(
    model: MMDiTX, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = list(model.joint_blocks)
    pointers = [[p.data_ptr() for p in b.parameters()] for b in blocks]
    events: list[tuple[str, int]] = []
    prefetch = devices._BlockStreamer.prefetch

    def recording_prefetch(self: devices._BlockStreamer, i: int) -> None:
        events.append(("prefetch", i))
        prefetch(self, i)
        assert {t.device.type for t in self.pending[i][0].values()} == {"meta"}

    monkeypatch.setattr(devices._BlockStreamer, "prefetch", recording_prefetch)

    def running(block: torch.nn.Module) -> None:
        events.append(("run", blocks.index(block)))
        assert [_on(b) for b in blocks] == [{"meta"} if b is block else {"cpu"} for b in blocks]

    with torch.no_grad(), stream_blocks(model, blocks, META):
        hooks = [b.register_forward_pre_hook(lambda module, _args: running(module)) for b in blocks]
        assert model.x_embedder.proj.weight.device.type == "meta"  # the rest lives on the device
        assert all(_on(b) == {"cpu"} for b in blocks)  # blocks wait in CPU memory
        for _ in range(2):  # two steps: block 0 of the second is prefetched by the last block of the first
            out = model(*_inputs("meta"))
        for h in hooks:
            h.remove()
    assert out.device.type == "meta" and out.shape == (2, 16, 8, 8)
    n = len(blocks)
    runs = [i for kind, i in events if kind == "run"]
    assert runs == list(range(n)) * 2
    # before block i runs, block i+1 (wrapping to 0 for the next step) has been asked for
    for k, (kind, i) in enumerate(events):
        if kind == "run":
            assert ("prefetch", (i + 1) % n) in events[:k]
    assert all(_on(b) == {"cpu"} for b in blocks)
    assert [[p.data_ptr() for p in b.parameters()] for b in blocks] == pointers  # never copied back


def test_an_error_mid_forward_leaves_every_block_on_its_cpu_weights(model: MMDiTX) -> None:
    blocks = list(model.joint_blocks)

    def fail(*_: object) -> None:
        raise RuntimeError("out of memory (simulated)")

    handle = blocks[1].register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="simulated"), torch.no_grad(), stream_blocks(model, blocks, META):
        model(*_inputs("meta"))
    handle.remove()
    assert all(_on(b) == {"cpu"} for b in blocks)
    assert not any(b._forward_pre_hooks for b in blocks)  # the streaming hooks are gone


def test_streamed_forward_equals_the_plain_forward_on_the_cpu(model: MMDiTX) -> None:
    inputs = _inputs("cpu")
    with torch.no_grad():
        plain = model(*inputs)
        with stream_blocks(model, list(model.joint_blocks), DevicePolicy(lowvram=True)):
            streamed = model(*inputs)
    assert torch.equal(plain, streamed)
