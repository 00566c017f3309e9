"""Rerun blueprints (view layouts) for the README's viewer screenshots.

`scripts/screenshots` calls this to write one `.rbl` per kind of recording; the viewer
opens a recording together with its blueprint (`rerun run.rrd run.rbl`). The layouts
are what a user would arrange by hand: the task's scene beside the signals that explain
it, on the timeline that orders the recording.

Usage: python3 scripts/screenshots.py OUT_DIR
"""

import sys
from pathlib import Path

import rerun as rr
import rerun.blueprint as rrb
from rerun.blueprint.archetypes import TimeAxis

# Plots show the whole recording, not a window around the time cursor.
WHOLE = TimeAxis(
    view_range=rr.datatypes.TimeRange(
        start=rr.datatypes.TimeRangeBoundary.infinite(),
        end=rr.datatypes.TimeRangeBoundary.infinite(),
    )
)


def series(origin: str = "/", **kwargs) -> rrb.TimeSeriesView:
    return rrb.TimeSeriesView(origin=origin, axis_x=WHOLE, **kwargs)


def controller() -> rrb.Blueprint:
    """`controller run --rerun`: scene and candidates, observation, action, Q, timing."""
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial2DView(origin="scene", name="scene (sim task)"),
                rrb.Spatial2DView(
                    origin="policy",
                    contents=["policy/candidates", "policy/selected"],
                    name="candidates: base (blue), edited (orange), chosen (green)",
                ),
            ),
            rrb.Vertical(
                series("observation.state", name="observation.state"),
                series("action", name="action (sent)"),
                series("policy/q", name="Q: chosen, best base, best edit, spread"),
                series("timing", name="per-tick time (µs)"),
            ),
            column_shares=[2, 3],
        ),
        rrb.TimePanel(timeline="tick", play_state="following", state="collapsed"),
        collapse_panels=True,
    )


def loop() -> rrb.Blueprint:
    """`controller bench-loop --rerun`: the loop's cadence, tick by tick."""
    return rrb.Blueprint(
        rrb.Vertical(
            series(
                contents=["timing/tick_us"],
                name="tick work (µs): wake to end of tick; above the period = overrun",
            ),
            series(contents=["timing/jitter_us"], name="wake-up jitter (µs)"),
            series(
                contents=["timing/infer_us", "timing/read_us", "timing/send_us"],
                name="stages (µs): policy, read, send",
            ),
        ),
        rrb.TimePanel(timeline="tick", play_state="paused", state="collapsed"),
        collapse_panels=True,
    )


def dataset() -> rrb.Blueprint:
    """`tools viz dataset`: scene, observation, action, reward and success."""
    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Spatial2DView(origin="scene", name="scene (sim task)"),
            rrb.Vertical(
                series("observation.state", name="observation.state"),
                series("action", name="action"),
                series(
                    contents=["next.reward", "next.success"],
                    name="next.reward, next.success",
                ),
            ),
            column_shares=[2, 3],
        ),
        rrb.TimePanel(timeline="index", play_state="following", state="collapsed"),
        collapse_panels=True,
    )


def run() -> rrb.Blueprint:
    """`tools viz run` on a `trainer train` run: held-out success and the learner's
    signals against environment steps."""

    def plot(name: str, *columns: str) -> rrb.TimeSeriesView:
        return series("/", contents=list(columns), name=name)

    return rrb.Blueprint(
        rrb.Grid(
            plot("held-out success rate (eval.csv)", "metrics/eval/success_rate"),
            plot("critic loss", "metrics/metrics/critic_loss"),
            plot(
                "Q: batch mean, TD target, edit policy",
                "metrics/metrics/q_mean",
                "metrics/metrics/target_q_mean",
                "metrics/metrics/policy_q",
            ),
            plot("denoiser loss", "metrics/metrics/denoiser_loss"),
            plot("edit policy entropy", "metrics/metrics/entropy"),
            plot("temperature", "metrics/metrics/temperature"),
        ),
        rrb.TimePanel(timeline="step", play_state="paused", state="collapsed"),
        collapse_panels=True,
    )


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    controller().save("expo_controller", out / "controller.rbl")
    loop().save("expo_controller", out / "loop.rbl")
    dataset().save("expo_dataset", out / "dataset.rbl")
    run().save("expo_run", out / "run.rbl")


if __name__ == "__main__":
    main()
