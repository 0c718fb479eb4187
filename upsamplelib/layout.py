"""Memory layouts on the CPU: NCHW <-> channels-last copies, fast.

PyTorch's transposed convolutions on a CPU (oneDNN) are fastest on
channels-last maps, and the library's ops return the usual NCHW ones, so
the cpu backend of the semi-shift convolution copies its input gradients
between the two layouts (and CARAFE and SAPA copy channels-last maps to the
NCHW their loops read). PyTorch's own
copy moves one element at a time: 0.8 ms for a 64 x 128 x 128 float32 map
on 2 cores (medians on the course's test machine), four times a plain copy
of it. Here each 8 x 8 block of the (channels x pixels) plane is read as 8
vectors, transposed in registers with LLVM vector shuffles, and written as
8 vectors: 0.3 ms. LLVM lowers the shuffles to each machine's own (AVX on
x86, NEON on arm64).

* ``to_channels_last(t)``: ``t.contiguous(memory_format=torch.channels_last)``,
  differentiable in reverse mode (not forward mode: ``semi_shift_conv``,
  which uses it, adds its tangent itself, from the primal maps), by the
  operator ``channels_last_copy`` (a ``backend.Operator``: through
  ``torch.ops`` where traced, else its function itself);
* ``to_channels_first(t)``: ``t.contiguous()`` for a channels-last ``t``, the
  same way (``channels_first_copy``).

Each copy's gradient is the other copy, so a gradient goes back in the
layout of the tensor it is for. Maps with fewer than 8 channels, or fewer
than 32,768 values, are copied by PyTorch's own copy, faster for them.

Both run a parallel Numba loop, under the same threading rules as every CPU
kernel of the library.
"""

from __future__ import annotations

import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from . import backend
from .backend import cpu_kernel, operator, run

# Shuffle masks of the 8 x 8 transpose (indices into two 8-lane vectors a, b;
# 8 + i is b[i]): interleave rows pairwise, then pairs of pairs, then halves.
INTERLEAVE_LOW = [0, 8, 1, 9, 4, 12, 5, 13]
INTERLEAVE_HIGH = [2, 10, 3, 11, 6, 14, 7, 15]
PAIRS_LOW = [0, 1, 8, 9, 4, 5, 12, 13]
PAIRS_HIGH = [2, 3, 10, 11, 6, 7, 14, 15]
HALVES_LOW = [0, 1, 2, 3, 8, 9, 10, 11]
HALVES_HIGH = [4, 5, 6, 7, 12, 13, 14, 15]


@intrinsic
def transpose_block(typingctx, source, source_start, source_stride, out, out_start, out_stride):
    """``out[out_start + j * out_stride + i] = source[source_start + i * source_stride + j]``
    for i, j < 8, on flat arrays of one float type: 8 vector loads, 24
    shuffles, 8 vector stores (LLVM lowers them to the machine's vectors)."""

    def codegen(context, builder, signature, args):
        source_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        out_data = context.make_array(signature.args[3])(context, builder, args[3]).data
        vector = ir.VectorType(context.get_data_type(signature.args[0].dtype), 8)
        index = ir.IntType(64)

        def row(data, start, stride, k):
            offset = builder.add(start, builder.mul(stride, ir.Constant(index, k)))
            return builder.bitcast(builder.gep(data, [offset]), vector.as_pointer())

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(ir.IntType(32), 8), mask))

        rows = [builder.load(row(source_data, args[1], args[2], k), align=1) for k in range(8)]
        pairs = []
        for k in range(0, 8, 2):
            pairs += [shuffle(rows[k], rows[k + 1], INTERLEAVE_LOW), shuffle(rows[k], rows[k + 1], INTERLEAVE_HIGH)]
        quads = []
        for a, b in ((0, 2), (4, 6)):
            quads += [shuffle(pairs[a], pairs[b], PAIRS_LOW), shuffle(pairs[a], pairs[b], PAIRS_HIGH),
                      shuffle(pairs[a + 1], pairs[b + 1], PAIRS_LOW), shuffle(pairs[a + 1], pairs[b + 1], PAIRS_HIGH)]
        columns = ([shuffle(quads[k], quads[k + 4], HALVES_LOW) for k in range(4)]
                   + [shuffle(quads[k], quads[k + 4], HALVES_HIGH) for k in range(4)])
        for k in range(8):
            builder.store(columns[k], row(out_data, args[4], args[5], k), align=1)
        return context.get_dummy_value()

    if source != out or not isinstance(source, types.Array) or source.dtype not in (types.float32, types.float64):
        return None
    return types.void(source, types.int64, types.int64, out, types.int64, types.int64), codegen


#: Each parallel job transposes one TILE x TILE square of a plane: the
#: rows it reads and writes (16 KB in float32, 32 KB in float64) stay in
#: the first-level cache. Where out's rows lie further apart than the
#: source's (channels-last to NCHW), a job's tile is TALL_TILE source rows
#: by TILE columns (32 KB in float32, 64 KB in float64: measured faster all
#: the same, see ``transpose_planes_cpu``).
TILE = 64
TALL_TILE = 128


@cpu_kernel
def transpose_planes_cpu(source, out, planes, rows, columns):
    """``out[n]`` (columns x rows) = ``source[n]`` (rows x columns) transposed,
    for each of ``planes`` planes of flat C-ordered arrays.

    A block's 8 writes go to 8 rows of out, ``rows`` elements apart. Where
    that is the larger stride (channels-last to NCHW: 16,384 pixels against
    64 channels), the inner loop runs along the source's rows, so each
    group of 8 rows of out is written along the whole tile before the next
    group: the other way round, the tile touched 64 rows of out 64 KiB
    apart at once, which fall into one set of the first-level cache and
    evicted each other half-written. A 64 x 128 x
    128 float32 map, channels-last to NCHW: 0.36 ms, then 0.23 in this
    order, then 0.17-0.19 with tiles of 128 rows (NCHW to channels-last:
    0.14-0.19; 2-core AMD EPYC, znver3; the tall tile was 1.4x slower that
    way at 256 channels)."""
    tall = rows > columns
    row_tile = TALL_TILE if tall else TILE
    row_tiles = (rows + row_tile - 1) // row_tile
    column_tiles = (columns + TILE - 1) // TILE
    for job in prange(planes * row_tiles * column_tiles):
        n = job // (row_tiles * column_tiles)
        row_begin = job // column_tiles % row_tiles * row_tile
        column_begin = job % column_tiles * TILE
        row_end, column_end = min(row_begin + row_tile, rows), min(column_begin + TILE, columns)
        row_blocks_end = row_begin + (row_end - row_begin) // 8 * 8
        column_blocks_end = column_begin + (column_end - column_begin) // 8 * 8
        plane = n * rows * columns
        if tall:
            for c in range(column_begin, column_blocks_end, 8):
                for r in range(row_begin, row_blocks_end, 8):
                    transpose_block(source, plane + r * columns + c, columns, out, plane + c * rows + r, rows)
        else:
            for r in range(row_begin, row_blocks_end, 8):
                for c in range(column_begin, column_blocks_end, 8):
                    transpose_block(source, plane + r * columns + c, columns, out, plane + c * rows + r, rows)
        for r in range(row_begin, row_end):  # the edges no whole 8 x 8 block covers
            for c in range(column_blocks_end if r < row_blocks_end else column_begin, column_end):
                out[plane + c * rows + r] = source[plane + r * columns + c]


#: Below about this many values PyTorch's copy is faster: the block
#: transpose's parallel launch costs more than it saves.
SMALLEST_FAST_COPY = 1 << 15
#: Below this many channels no whole 8 x 8 block fits across them, and the
#: edge loop is slower than PyTorch's copy: 0.59 ms against 0.30 for a
#: 2 x 2 x 512 x 512 map to channels-last (test machine).
FEWEST_FAST_CHANNELS = 8


def _block_transposable(tensor: torch.Tensor, memory_format, any_size: bool = False) -> bool:
    """Whether the block transpose copies ``tensor``, which must be dense in
    ``memory_format``; ``any_size``: whatever its size and channels (which
    the op then checks inside)."""
    return (tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64) and tensor.dim() == 4
            and not backend.FORKED_AFTER_OPENMP
            and (any_size or (tensor.numel() >= SMALLEST_FAST_COPY and tensor.shape[1] >= FEWEST_FAST_CHANNELS))
            and tensor.is_contiguous(memory_format=memory_format))


def _in_memory_order(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A dense 4-D tensor as the flat array it is in memory (a view)."""
    return tensor.permute(0, 2, 3, 1).reshape(-1) if channels_last else tensor.view(-1)


def _block_copy(tensor: torch.Tensor, memory_format) -> torch.Tensor:
    """A new copy of a 4-D tensor in ``memory_format`` (channels-last or NCHW),
    by the block transpose where it applies, else by PyTorch's copy."""
    out = torch.empty_like(tensor, memory_format=memory_format)
    to_last = memory_format == torch.channels_last
    if _block_transposable(tensor, torch.contiguous_format if to_last else torch.channels_last):
        batch, channels, height, width = tensor.shape
        # An image is a (channels x pixels) plane in NCHW memory, a (pixels x channels) one in channels-last.
        rows, columns = (channels, height * width) if to_last else (height * width, channels)
        run(transpose_planes_cpu, "cpu", out.numel(), _in_memory_order(tensor, not to_last),
            _in_memory_order(out, to_last), batch, rows, columns)
    else:
        out.copy_(tensor)
    return out


@operator("channels_last_copy")
def channels_last_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A new channels-last copy of a 4-D tensor."""
    return _block_copy(tensor, torch.channels_last)


@channels_last_copy.register_fake
def _(tensor):
    return torch.empty_like(tensor, memory_format=torch.channels_last)


@operator("channels_first_copy")
def channels_first_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A new NCHW (contiguous) copy of a 4-D tensor."""
    return _block_copy(tensor, torch.contiguous_format)


@channels_first_copy.register_fake
def _(tensor):
    return torch.empty_like(tensor, memory_format=torch.contiguous_format)


# Each copy's gradient goes back in the layout of the copy's input: autograd would otherwise copy a
# leaf's .grad into its layout, by PyTorch's slower copy. Batched gradients cannot tell their layout.
channels_last_copy.register_autograd(lambda ctx, grad: grad if is_vmapped(grad) else to_channels_first(grad),
                                     setup_context=lambda ctx, inputs, output: None)
channels_first_copy.register_autograd(lambda ctx, grad: grad if is_vmapped(grad) else to_channels_last(grad),
                                      setup_context=lambda ctx, inputs, output: None)


def is_vmapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is one of ``torch.func.vmap``'s batched tensors (or
    of autograd's batched gradients), which cannot tell their memory format.
    Dynamo traces this query (it cannot trace the legacy one)."""
    functorch = torch._C._functorch
    if torch.compiler.is_compiling():
        return functorch.is_batchedtensor(tensor)
    return functorch.is_batchedtensor(tensor) or functorch.is_legacy_batchedtensor(tensor)


def _copy(tensor: torch.Tensor, memory_format) -> torch.Tensor:
    """``tensor`` (dense in the other layout) copied into ``memory_format``
    by the copy operators, so that its gradient comes back in its layout
    (PyTorch's own copy would give it back in the copy's). Traced or
    transformed, they take it whatever its size, and check it inside:
    outside them, torch.export would keep the size test as a limit on the
    input's size, torch.compile(dynamic=True) would recompile where a size
    crosses it, and torch.jit.trace would keep the branch of the traced
    size."""
    to_last = memory_format == torch.channels_last
    if not _block_transposable(tensor, torch.contiguous_format if to_last else torch.channels_last, any_size=True):
        return tensor.contiguous(memory_format=memory_format)
    return (channels_last_copy if to_last else channels_first_copy)(tensor)


def to_channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """The (N, C, H, W) tensor with channels-last memory: itself if it has
    it, else a copy (differentiable; traceable by ``torch.compile``)."""
    if tensor.is_contiguous(memory_format=torch.channels_last):
        return tensor
    return _copy(tensor, torch.channels_last)


def to_channels_first(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.contiguous()`` for an (N, C, H, W) tensor, by the block
    transpose when it is channels-last (differentiable; traceable by
    ``torch.compile``)."""
    if tensor.is_contiguous():
        # Already in NCHW order. A size-1 dimension may have any stride (one channel, or one pixel): give it
        # the usual one, as the ops' fake implementations do. Traced, always a view: comparing symbolic strides
        # would guard on them. Eagerly, the usual strides return the tensor itself (two views cost 5-8 us).
        if not torch.compiler.is_compiling() and tuple(tensor.stride()) == nchw_strides(tensor.shape):
            return tensor
        return tensor.view(-1).view(tensor.shape)
    return _copy(tensor, torch.contiguous_format)


def is_only_channels_last(tensor: torch.Tensor) -> bool:
    """Whether a 4-D ``tensor`` is a dense channels-last map that is not also
    NCHW (one channel, or one pixel, is both: it counts as NCHW)."""
    return not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last)


def kernel_layout(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` made NCHW for kernels that read NCHW, by ``to_channels_first``
    (so a channels-last map's gradient goes back channels-last); a batched
    tensor of vmap as it is (the operator then makes each entry contiguous)."""
    return tensor if is_vmapped(tensor) else to_channels_first(tensor)


def memory_format(channels_last: bool):
    """The memory format of a channels-last map, or of an NCHW one."""
    return torch.channels_last if channels_last else torch.contiguous_format


def empty_map(like: torch.Tensor, channels: int, height: int, width: int, channels_last: bool) -> torch.Tensor:
    """An empty (N, channels, height, width) map with ``like``'s batch, dtype
    and device, channels-last or NCHW."""
    return torch.empty((like.shape[0], channels, height, width), dtype=like.dtype, device=like.device,
                       memory_format=memory_format(channels_last))


def with_layout_strides(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``tensor`` if it has the strides ``torch.empty(..., memory_format=
    memory_format(channels_last))`` gives, else such a copy; never a view,
    which an operator's result must not be (forward-mode AD asserts on it).
    An operator's result must have the strides its fake implementation
    promises; a library's result (a convolution's) may differ in the strides
    of its size-1 dimensions. The strides are worked out, not read from an
    empty probe: allocating one beside a large result cost 1.3 ms of a 3.5 ms
    convolution (the next large allocation came back as fresh pages)."""
    expected = channels_last_strides(tensor.shape) if channels_last else nchw_strides(tensor.shape)
    if tuple(tensor.stride()) == expected:
        return tensor
    return torch.empty_like(tensor, memory_format=memory_format(channels_last)).copy_(tensor)


def with_channels_last_strides(tensor: torch.Tensor) -> torch.Tensor:
    """``with_layout_strides`` for a channels-last result."""
    return with_layout_strides(tensor, True)


def nchw_strides(shape) -> tuple:
    """The strides ``torch.empty(shape)`` has, for an (N, C, H, W) shape
    (a zero size counts as one)."""
    _, channels, height, width = (max(size, 1) for size in shape)
    return (channels * height * width, height * width, width, 1)


def channels_last_strides(shape) -> tuple:
    """The strides ``torch.empty(shape, memory_format=torch.channels_last)``
    has, for an (N, C, H, W) shape (PyTorch's ``get_channels_last_strides_2d``)."""
    _, channels, height, width = shape
    return (height * width * channels, 1, width * channels, channels)
