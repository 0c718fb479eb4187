"""The registry of graded exercises: one record per exercise of every lesson.

Read by the checkers (fallbacks, the one-line "not solved yet" message), by
the autograder (``python -m upsamplelib.grade``) and by the tests. Its shape
is stable; lessons add records, never fields:

``EXERCISES``
    ``{exercise id: Exercise}`` in lesson order, ids as the notebooks write
    them (``"01.3"``: lesson 01, exercise 3).

``Exercise`` fields
    ``id``          ``"01.3"``.
    ``lesson``      the notebook's stem, ``"01_nearest"`` (``solutions/`` and
                    ``lessons/`` use the same names).
    ``title``       the exercise's heading in the lesson, after the dash.
    ``defines``     the names the student's solution cell defines in the
                    notebook (kernels, functions, classes).
    ``checkers``    the names of the ``upsamplelib.checkers`` functions that
                    grade it.
    ``calls``       the checker calls of the lesson's checker cell, as Python
                    expressions to evaluate in the notebook's namespace with
                    ``checkers`` bound to ``upsamplelib.checkers``.
    ``depends_on``  the earlier exercises whose code this one calls (direct
                    dependencies only; ``requires()`` follows them through).
                    When one of those is unsolved, the checker falls back to
                    the library's version of it and says so in one line.

A lesson that adds exercises appends its records with ``_add`` below.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Exercise:
    id: str
    lesson: str
    title: str
    defines: tuple[str, ...]
    checkers: tuple[str, ...]
    calls: tuple[str, ...]
    depends_on: tuple[str, ...] = ()


#: Every graded exercise, by id, in lesson order.
EXERCISES: dict[str, Exercise] = {}


def _add(id, lesson, title, defines, calls, depends_on=()):
    defines = (defines,) if isinstance(defines, str) else tuple(defines)
    calls = (calls,) if isinstance(calls, str) else tuple(calls)
    names = tuple(dict.fromkeys(call.split("(", 1)[0].removeprefix("checkers.") for call in calls))
    for earlier in depends_on:
        if earlier not in EXERCISES:
            raise ValueError(f"exercise {id} depends on {earlier}, which is not registered before it")
    EXERCISES[id] = Exercise(id, lesson, title, defines, names, calls, tuple(depends_on))


_add("00.1", "00_gpu_model", "a guarded kernel", "scale_kernel", "checkers.check_scale_kernel(scale_kernel)")
_add("00.2", "00_gpu_model", "compute a launch configuration", "launch_config",
     "checkers.check_launch_config(launch_config)")
_add("00.3", "00_gpu_model", "a grid-stride loop", "grid_stride_kernel",
     "checkers.check_grid_stride_kernel(grid_stride_kernel)")
_add("00.4", "00_gpu_model", "a 2-D kernel", "flip_kernel", "checkers.check_flip_kernel(flip_kernel)")
_add("00.5", "00_gpu_model", "zero-copy arrays", "to_kernel_array",
     "checkers.check_to_kernel_array(to_kernel_array)")

_add("01.1", "01_nearest", "`nearest`", "nearest_index", "checkers.check_nearest_index(nearest_index)")
_add("01.2", "01_nearest", "`nearest-exact`", "nearest_exact_index",
     "checkers.check_nearest_exact_index(nearest_exact_index)")
_add("01.3", "01_nearest", "one plane, a 2-D grid", "nearest_plane_kernel",
     "checkers.check_nearest_plane_kernel(nearest_plane_kernel)", depends_on=("01.1",))
_add("01.4", "01_nearest", "`(planes, H, W)`, both modes", "nearest_kernel",
     ("checkers.check_nearest_kernel(nearest_kernel, exact=False)",
      "checkers.check_nearest_kernel(nearest_kernel, exact=True)"), depends_on=("01.1", "01.2"))

_add("02.1", "02_bilinear", "the 1-D index and weights", "linear_index", "checkers.check_linear_index(linear_index)")
_add("02.2", "02_bilinear", "`bilinear_kernel`", "bilinear_kernel", "checkers.check_bilinear_kernel(bilinear_kernel)",
     depends_on=("02.1",))
_add("02.3", "02_bilinear", "scatter with atomics", "bilinear_scatter_kernel",
     "checkers.check_bilinear_scatter_kernel(bilinear_scatter_kernel)", depends_on=("02.1",))
_add("02.4", "02_bilinear", "gather", "bilinear_gather_kernel",
     "checkers.check_bilinear_gather_kernel(bilinear_gather_kernel)", depends_on=("02.1",))
# The lesson's BilinearFunction runs bilinear_kernel forward and the gather
# backward (the scatter is allowed too).
_add("02.5", "02_bilinear", "`BilinearFunction`", "BilinearFunction",
     "checkers.check_bilinear_function(BilinearFunction)", depends_on=("02.1", "02.2", "02.3", "02.4"))

_add("03.1", "03_carafe", "`predict_kernels`", "predict_kernels", "checkers.check_predict_kernels(predict_kernels)")
_add("03.2", "03_carafe", "naive: on a padded copy", "carafe_padded_kernel",
     "checkers.check_carafe_padded_kernel(carafe_padded_kernel)")
_add("03.3", "03_carafe", "correct at the borders", "carafe_border_kernel",
     "checkers.check_carafe_border_kernel(carafe_border_kernel)")
_add("03.4", "03_carafe", "groups", "carafe_group_kernel", "checkers.check_carafe_group_kernel(carafe_group_kernel)")
_add("03.5", "03_carafe", "the tiled kernel", "carafe_tiled_kernel",
     "checkers.check_carafe_tiled_kernel(carafe_tiled_kernel, tile=TILE, max_radius=MAX_RADIUS)")
_add("03.6", "03_carafe", "gradient of the features", "carafe_grad_x_kernel",
     "checkers.check_carafe_grad_x_kernel(carafe_grad_x_kernel)")
_add("03.7", "03_carafe", "gradient of the kernels", "carafe_grad_masks_kernel",
     "checkers.check_carafe_grad_masks_kernel(carafe_grad_masks_kernel)")
_add("03.8", "03_carafe", "`CarafeFunction`", "CarafeFunction", "checkers.check_carafe_function(CarafeFunction)",
     depends_on=("03.4", "03.6", "03.7"))

_add("04.1", "04_sapa", "the embedding of SAPA-B", "sapa_embedding", "checkers.check_sapa_embedding(sapa_embedding)")
_add("04.2", "04_sapa", "the reference in PyTorch", "similarity_reference",
     "checkers.check_similarity_reference(similarity_reference)")
_add("04.3", "04_sapa", "`similarity_kernel`", "similarity_kernel", "checkers.check_similarity_kernel(similarity_kernel)")
_add("04.4", "04_sapa", "`softmax_kernel`", "softmax_kernel", "checkers.check_softmax_kernel(softmax_kernel)")
_add("04.5", "04_sapa", "`similarity_block_kernel`", "similarity_block_kernel",
     "checkers.check_similarity_block_kernel(similarity_block_kernel, THREADS)")
_add("04.6", "04_sapa", "the whole upsampler", "sapa_forward", "checkers.check_sapa_forward(sapa_forward)",
     depends_on=("04.5",))
_add("04.7", "04_sapa", "the gradient of the queries", "grad_query_kernel",
     "checkers.check_grad_query_kernel(grad_query_kernel)")
_add("04.8", "04_sapa", "the gradient of the keys, as a gather", "grad_key_kernel",
     "checkers.check_grad_key_kernel(grad_key_kernel)")

_add("05.1", "05_fade", "two convolutions in PyTorch", "semi_shift_two_convs",
     "checkers.check_semi_shift_two_convs(semi_shift_two_convs)")
_add("05.2", "05_fade", "one output pixel, in plain Python", "semi_shift_pixel",
     "checkers.check_semi_shift_pixel(semi_shift_pixel)")
_add("05.3", "05_fade", "the one-pass semi-shift kernel", "semi_shift_kernel",
     "checkers.check_semi_shift_kernel(semi_shift_kernel)")
_add("05.4", "05_fade", "the gradient of the encoder map", "grad_en_kernel",
     "checkers.check_semi_shift_grad_en_kernel(grad_en_kernel)")
_add("05.5", "05_fade", "the gradient of the decoder map", "grad_de_kernel",
     "checkers.check_semi_shift_grad_de_kernel(grad_de_kernel)")
_add("05.6", "05_fade", "the gradient of the weight", "grad_weight_kernel",
     "checkers.check_semi_shift_grad_weight_kernel(grad_weight_kernel)")
_add("05.7", "05_fade", "the autograd Function", "SemiShiftFunction",
     "checkers.check_semi_shift_function(SemiShiftFunction)", depends_on=("05.3", "05.4", "05.5", "05.6"))
_add("05.8", "05_fade", "the forward of the module", "fade_forward", "checkers.check_fade_forward(fade_forward)")

_add("06.1", "06_capstone", "the band", "boundary_band", "checkers.check_boundary_band(boundary_band)")
_add("06.2", "06_capstone", "boundary IoU", "boundary_iou", "checkers.check_boundary_iou(boundary_iou)")
_add("06.3", "06_capstone", "the gradient error", "gradient_error", "checkers.check_gradient_error(gradient_error)")
_add("06.4", "06_capstone", "your own upsampler: sub-pixel convolution", "PixelShuffleUp",
     "checkers.check_pixel_shuffle_upsampler(PixelShuffleUp)")
_add("06.5", "06_capstone", "a fair comparison: the same parameter budget", "matched_width",
     "checkers.check_matched_width(matched_width)")

_add("07.1", "07_performance", "`median_time`", "median_time", "checkers.check_median_time(median_time)")
_add("07.2", "07_performance", "`carafe_traffic`", "carafe_traffic", "checkers.check_carafe_traffic(carafe_traffic)")
_add("07.3", "07_performance", "CARAFE channels-last", "carafe_channels_last_kernel",
     "checkers.check_carafe_channels_last_kernel(carafe_channels_last_kernel)")
_add("07.4", "07_performance", "several channels per thread", "carafe_channel_blocked_kernel",
     "checkers.check_carafe_channel_blocked_kernel(carafe_channel_blocked_kernel, CHANNELS_PER_THREAD)")
# carafe_cpu_slow is the lesson's given slow loop order, the baseline the checker times against.
_add("07.5", "07_performance", "`carafe_rows_cpu`", "carafe_rows_cpu",
     "checkers.check_carafe_rows_cpu(carafe_rows_cpu, carafe_cpu_slow)")


def for_lesson(lesson: str) -> list[Exercise]:
    """The exercises of a lesson, by notebook stem (``"01_nearest"``) or
    number (``"01"``), in order."""
    return [e for e in EXERCISES.values() if e.lesson == lesson or e.lesson.split("_", 1)[0] == lesson]


def requires(exercise_id: str) -> list[str]:
    """Every earlier exercise that ``exercise_id`` builds on, directly or
    through another, in lesson order."""
    found = set()
    pending = list(EXERCISES[exercise_id].depends_on)
    while pending:
        earlier = pending.pop()
        if earlier not in found:
            found.add(earlier)
            pending.extend(EXERCISES[earlier].depends_on)
    return [e for e in EXERCISES if e in found]


def dependents(exercise_id: str) -> list[str]:
    """The exercises that build on ``exercise_id``, directly or not."""
    return [e for e in EXERCISES if exercise_id in requires(e)]


def by_checker(checker_name: str) -> Exercise | None:
    """The exercise a checker function (``"check_nearest_index"``) grades."""
    for exercise in EXERCISES.values():
        if checker_name in exercise.checkers:
            return exercise
    return None
