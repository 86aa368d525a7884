"""Device and precision choice, said out loud (users lose hours to silent CPU fallbacks)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

__all__ = ["select_device", "select_precision", "autocast", "release_memory", "memory_format",
           "batch_that_fits", "measure_batch_size", "inference_module", "too_large",
           "exact_fp32", "CPU_BATCH"]

# Tiles per forward pass where there is no device memory to fit (CPU, MPS): larger batches
# gain nothing on a CPU and cost memory.
from .plan import CPU_BATCH  # noqa: E402  (one value, used by the plan before a device)


def memory_format(spatial_dims: int) -> torch.memory_format:
    """Channels-last layout: measured 1.3x (fp32) to 2.8x (with bf16) faster convolutions on
    CPU, and what tensor cores want on GPU."""
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    """An independent copy of ``module``: a UNet rebuilt from its configuration and cloned
    tensors (``copy.deepcopy`` took 45 ms for the built-in model), anything else deep-copied."""
    import copy

    from ..model.checkpoint import unet_from_state
    from ..model.unet import UNet

    if type(module) is UNet:
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        return unet_from_state(module.config, state).train(module.training)
    return copy.deepcopy(module)


def inference_module(module: torch.nn.Module, device: torch.device,
                     spatial_dims: int) -> torch.nn.Module:
    """The module the engine runs: eval mode, on ``device``, channels-last, and
    every batch norm that directly follows a convolution inside an ``nn.Sequential`` folded
    into that convolution's weights and bias.

    Folding computes the same function with one pass over each activation less (faster
    forward passes, outputs equal within float rounding; benchmarks/README.md).  A module
    with something to fold is copied and
    left as it was (mode, device and weights); any other module runs as it is.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    convs = (torch.nn.Conv2d, torch.nn.Conv3d)
    norms = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

    pairs = []  # (path of the Sequential, name of the conv, name of the norm)
    for path, seq in module.named_modules():
        if isinstance(seq, torch.nn.Sequential):  # there the norm reads the conv's output
            names = list(seq._modules)
            pairs += [(path, a, b) for a, b in zip(names, names[1:], strict=False)
                      if isinstance(seq._modules[a], convs)
                      and isinstance(seq._modules[b], norms)
                      and seq._modules[b].running_mean is not None]
    if pairs:
        module = _copy(module).eval()
        for path, a, b in pairs:
            seq = module.get_submodule(path)
            seq._modules[a] = fuse_conv_bn_eval(seq._modules[a], seq._modules[b])
            seq._modules[b] = torch.nn.Identity()
    return module.eval().to(device, memory_format=memory_format(spatial_dims))


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks cuda, then mps, then cpu; an explicit GPU that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {name!r} was requested but this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use device='cpu' or install a CUDA build of torch"
        )
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} does not exist: {torch.cuda.device_count()} GPU(s) visible"
            )
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RuntimeError("device 'mps' was requested but Apple MPS is not available")
    return device


def cpu_has_fast_bf16() -> bool:
    """The CPU computes bf16 natively (AVX512-BF16 / AMX): autocast is ~2x faster there and
    far slower where it is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def select_precision(precision: str, device: torch.device) -> str:
    """Resolve ``"auto"``: bf16 (or fp16 where bf16 is missing) on a GPU; on the CPU bf16
    where the processor computes it natively, else fp32.  An explicit bf16 on a CPU without
    it is kept, with a warning: it is emulated there, many times slower than fp32."""
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn(
            "precision='bf16' on a CPU without native bf16 (AVX512-BF16 / AMX): autocast is "
            "emulated and many times slower than fp32 here; use precision='auto' or 'fp32'",
            stacklevel=2,
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed-precision context for ``precision`` ("fp32" disables autocast; see also
    :func:`exact_fp32`)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_DTYPES[precision]):
        yield


def _tf32_switches() -> list[tuple[object, str, object]]:
    """(object, attribute, value for exact fp32) of PyTorch's TensorFloat-32 switches: the
    per-backend ``fp32_precision`` where this torch has it, else the legacy ``allow_tf32``
    (torch refuses to read one kind after the other was set, so only one kind is used)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        return [(conv, "fp32_precision", "ieee"), (matmul, "fp32_precision", "ieee")]
    return [(torch.backends.cudnn, "allow_tf32", False), (matmul, "allow_tf32", False)]


@contextlib.contextmanager
def exact_fp32(device: torch.device, precision: str) -> Iterator[None]:
    """For a run in "fp32" on CUDA: TensorFloat-32 off for its duration (forward and backward),
    restored afterwards.

    PyTorch computes fp32 convolutions in TF32 on CUDA by default (10 mantissa bits: measured
    3e-4 off the CPU's probabilities on an H200), so without this "fp32" would not mean fp32.
    The switches are process-wide: other threads computing meanwhile run in exact fp32 too.
    Where they were set elsewhere with both of PyTorch's APIs, they are left alone.
    """
    if precision != "fp32" or device.type != "cuda":
        yield
        return
    switches = _tf32_switches()
    try:
        saved = [getattr(obj, name) for obj, name, _ in switches]
    except RuntimeError:  # the legacy and the new API mixed elsewhere: the user's choice
        saved = None
    if saved is not None:
        for obj, name, value in switches:
            setattr(obj, name, value)
    try:
        yield
    finally:
        if saved is not None:
            for (obj, name, _), value in zip(switches, saved, strict=True):
                setattr(obj, name, value)


def release_memory(device: torch.device) -> None:
    """Hand cached GPU memory back so napari need not be restarted after a run."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


# Elements of the largest tensor of one forward pass, at most.  On an H200 the automatic plan
# without this cap (the budget of 64 tiles of 96**3 grown into one 256 x 512 x 512 tile: 2**31
# elements in the first layer's output, 32 channels, bf16) failed in cuDNN with "GET was
# unable to find an engine"; under it the plan (then 160 x 512 x 512) ran.  The cause inside
# cuDNN was not isolated; 32-bit indexing limits are the usual one.  Half of 2**31 leaves room
# for the engine growing a crop grid's tiles by up to 1.5x within the same budget.
MAX_ELEMENTS = 2**30


def too_large(err: BaseException) -> bool:
    """The device cannot run a batch this large: out of memory, or no cuDNN kernel for tensors
    of its size.  Either way fewer tiles per pass will run."""
    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "unable to find an engine" in str(err))


def batch_that_fits(free_bytes: float, per_tile_bytes: float, fraction: float = 0.6,
                    cap: int = 64, per_tile_elements: float = 0.0) -> int:
    """Tiles per forward pass that fit ``fraction`` of the free memory and keep the largest
    activation (``per_tile_elements`` per tile) within :data:`MAX_ELEMENTS`: a power of two
    (so a resumed run on the same GPU, with a little more or less free memory, plans the same
    tiles), at least 1 and at most ``cap``."""
    n = int(fraction * free_bytes // max(per_tile_bytes, 1.0))
    if per_tile_elements > 0:
        n = min(n, int(MAX_ELEMENTS // per_tile_elements))
    if n < 1:
        return 1
    return min(1 << (n.bit_length() - 1), cap)


def largest_tensor(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Elements of the largest tensor that goes into or comes out of any submodule of
    ``module`` in a forward pass of ``x`` (inputs too: the largest tensor of a U-Net is a
    decoder's input, upsampled features concatenated with the skip connection, which no
    module returns)."""
    largest = 0

    def note(_module, inputs, output) -> None:
        nonlocal largest
        for t in (*inputs, output):
            if isinstance(t, torch.Tensor):
                largest = max(largest, t.numel())

    handles = [m.register_forward_hook(note) for m in module.modules()]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return largest


def measure_batch_size(module: torch.nn.Module, tile: tuple[int, ...], in_channels: int,
                       device: torch.device, precision: str) -> int:
    """Tiles per forward pass for ``device``: on CUDA, measured -- the peak memory of a
    forward pass of two tiles (inference mode, the run's precision and layout) against the
    free memory; elsewhere :data:`CPU_BATCH`."""
    if device.type != "cuda":
        return CPU_BATCH
    module.to(device, memory_format=memory_format(len(tile))).eval()
    release_memory(device)
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    x = torch.zeros((2, in_channels, *tile), device=device).contiguous(
        memory_format=memory_format(len(tile)))
    with torch.inference_mode(), autocast(device, precision):
        largest = largest_tensor(module, x)
    torch.cuda.synchronize(device)
    per_tile = (torch.cuda.max_memory_allocated(device) - base) / 2
    del x
    release_memory(device)
    return batch_that_fits(free, per_tile, per_tile_elements=largest / 2)
