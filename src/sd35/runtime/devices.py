"""Explicit device and dtype policy: where each component lives and computes. No globals, no probing at import."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sd35.errors import UserInputError
from sd35.runtime.cpu import cpu_has_native_bf16

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str | None) -> torch.device:
    """'auto' / None → cuda when available, else mps, else cpu; otherwise the named device."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it, fp16 on older GPUs; on CPUs bf16 where they compute it natively
    (AVX512-BF16/AMX, Arm BF16: `cpu_has_native_bf16`), else fp32 (emulated bf16 is slower than fp32).

    On an AMX CPU bf16 samples 3.2x and decodes 4.7x faster than fp32 with a decoded image at 47 dB PSNR
    from the fp32 one (BENCHMARKS.md); `--dtype fp32` keeps full precision.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class DevicePolicy:
    """Where components run and in which dtype.

    `text_dtype` is never fp16: T5-XXL overflows there (sd3.5 reference and ComfyUI run it in fp32/bf16).
    `offload` moves each component back to `offload_device` once its stage is done (text encoders after
    encoding, MMDiT after sampling); `lowvram` additionally streams MMDiT blocks one at a time.
    """

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32  # MMDiT compute dtype
    vae_dtype: torch.dtype = torch.float32
    text_dtype: torch.dtype = torch.float32
    offload: bool = False
    lowvram: bool = False
    offload_device: torch.device = torch.device("cpu")
    t5_on_cpu: bool = False  # keep T5-XXL (~9.5 GB in bf16) in CPU memory and run it there
    t5_fp8: bool = False  # hold T5-XXL's linear weights in fp8 (per-tensor scale): ~4.8 GB instead of ~9.5

    def for_t5(self) -> DevicePolicy:
        """The policy T5 runs under: this one, or the CPU one when `t5_on_cpu` is set."""
        if not self.t5_on_cpu:
            return self
        return DevicePolicy(
            device=torch.device("cpu"), dtype=self.dtype, text_dtype=self.text_dtype, t5_fp8=self.t5_fp8
        )

    @classmethod
    def create(
        cls,
        device: str | None = None,
        dtype: str | None = None,
        *,
        lowvram: bool = False,
        t5_on_cpu: bool = False,
        t5_fp8: bool = False,
    ) -> DevicePolicy:
        dev = resolve_device(device)
        if dtype not in (None, "auto") and dtype not in DTYPES:
            raise UserInputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)} or auto")
        compute = DTYPES[dtype] if dtype not in (None, "auto") else default_dtype(dev)
        if dtype in (None, "auto"):
            log.info("computing in %s on %s (--dtype auto; --dtype fp32 for full precision)", compute, dev)
        text = torch.bfloat16 if compute == torch.float16 and dev.type == "cuda" else compute
        if text == torch.float16:
            text = torch.float32
        # the SD3 VAE is fine in bf16 and fp32; fp16 decodes of large images can overflow
        vae = torch.float32 if compute == torch.float16 else compute
        return cls(
            device=dev,
            dtype=compute,
            vae_dtype=vae,
            text_dtype=text,
            offload=dev.type != "cpu",
            lowvram=lowvram,
            t5_on_cpu=t5_on_cpu,
            t5_fp8=t5_fp8,
        )


@contextlib.contextmanager
def on_device(module: nn.Module, policy: DevicePolicy) -> Iterator[nn.Module]:
    """Move `module` to the compute device for a stage; move it back afterwards when the policy offloads."""
    module.to(policy.device)
    try:
        yield module
    finally:
        if policy.offload and policy.offload_device != policy.device:
            module.to(policy.offload_device)


class _BlockStreamer:
    """Holds each streamed block's weights in (pinned) CPU memory and copies one block ahead to the device.

    A block's device copy is made on a side CUDA stream (asynchronous from pinned memory) while the previous
    block computes; the compute stream waits on that copy's event only when the block starts. After its
    forward the block points at its CPU tensors again and the device copy is dropped: weights are never
    copied back. Off CUDA (e.g. the meta device in tests) the copies are plain synchronous ones.
    """

    def __init__(self, blocks: Sequence[nn.Module], device: torch.device) -> None:
        self.blocks, self.device = list(blocks), device
        self.index = {id(b): i for i, b in enumerate(self.blocks)}
        cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.host = [self._host_tensors(block, pin=cuda) for block in self.blocks]
        self.pending: dict[int, tuple[dict[str, Tensor], object]] = {}

    @staticmethod
    def _host_tensors(block: nn.Module, *, pin: bool) -> dict[str, Tensor]:
        tensors = dict(block.named_parameters()) | dict(block.named_buffers())
        host = {}
        for name, tensor in tensors.items():
            data = tensor.data
            if pin and not data.is_pinned():
                try:
                    data = data.pin_memory()
                except RuntimeError:  # page-locked memory exhausted: pageable copies still work, slower
                    log.warning("lowvram: could not pin block weights in CPU memory; copies will not overlap")
                    pin = False
            host[name] = data
        _assign(block, host)
        return host

    def prefetch(self, i: int) -> None:
        if i in self.pending:
            return
        stream = self.copy_stream
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            copies = {name: t.to(self.device, non_blocking=stream is not None) for name, t in self.host[i].items()}
            event = stream.record_event() if stream is not None else None
        self.pending[i] = (copies, event)

    def enter(self, block: nn.Module) -> None:
        i = self.index[id(block)]
        self.prefetch(i)
        copies, event = self.pending.pop(i)
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in copies.values():  # allocated on the copy stream, used on this one
                tensor.record_stream(current)
        _assign(block, copies)
        self.prefetch((i + 1) % len(self.blocks))  # the next step starts again at block 0

    def leave(self, block: nn.Module) -> None:
        _assign(block, self.host[self.index[id(block)]])

    def close(self) -> None:
        self.pending.clear()
        for block, host in zip(self.blocks, self.host):
            _assign(block, host)


def _assign(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Point `module`'s parameters and buffers (dotted names) at `tensors` without copying."""
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        param = owner._parameters.get(leaf)
        if param is not None:  # a new Parameter object: `.data =` refuses some device pairs (e.g. meta)
            owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=param.requires_grad)
        else:
            owner._buffers[leaf] = tensor


@contextlib.contextmanager
def stream_blocks(root: nn.Module, blocks: Sequence[nn.Module], policy: DevicePolicy) -> Iterator[nn.Module]:
    """Low-VRAM mode: keep `blocks` in CPU memory and give each its device weights only for its forward.

    Everything in `root` except `blocks` is moved to the compute device. At most two blocks hold device
    copies at a time: the one computing and the next, whose copy overlaps the current block's compute on
    CUDA (see `_BlockStreamer`). On leaving, `root`'s other parts go back to the offload device when the
    policy offloads; the blocks are back on their CPU tensors.
    """
    block_ids = {id(b) for b in blocks}
    for child in root.children():
        if id(child) not in block_ids and not any(id(m) in block_ids for m in child.modules()):
            child.to(policy.device)
    own = [*root.named_parameters(recurse=False), *root.named_buffers(recurse=False)]
    _assign(root, {name: tensor.data.to(policy.device) for name, tensor in own})
    for block in blocks:
        block.to(policy.offload_device)
    streamer = _BlockStreamer(blocks, policy.device)
    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(lambda module, _args: streamer.enter(module)))
        handles.append(block.register_forward_hook(lambda module, _args, _out: streamer.leave(module)))
    try:
        yield root
    finally:
        for handle in handles:
            handle.remove()
        streamer.close()
        if policy.offload:
            root.to(policy.offload_device)
