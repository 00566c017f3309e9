#!/usr/bin/env python3
"""Interop checks between the Rust `dataset` crate and LeRobotDataset v3 as
pyarrow (and so LeRobot / HF datasets) sees it. Needs only pyarrow + stdlib.

  check DIR EXPECTED_EPISODES EXPECTED_FRAMES
      Open DIR with pyarrow and assert the v3 layout: info.json fields, every
      feature present as a data column of its declared dtype, per-episode ranges
      in meta/episodes matching the data rows, timestamps at frame_index / fps
      (LeRobot's 1e-4 s tolerance), tasks.parquet readable, stats.json entries
      whose min/max/mean/std/count are those of the values pyarrow reads.
      Exits 1 with a message on the first mismatch; prints a one-line summary.

  write DIR [--success]
      Write a small dataset the way LeRobot does (List<float32> vectors, no
      next.observation.state / next.truncated, tasks as a pandas
      index): 2 episodes of 5 and 7 frames, obs_dim 4, act_dim 2, with
      observation.state[i][j] = i + j/10 and action[i][j] = -(i + j/10)
      (i = global frame index), next.reward = frame_index / 2,
      next.done true on the last frame of each episode (as LeRobot's converters
      mark it, however the episode ended). With --success, a next.success column
      too (as LeRobot's pusht has), true on the last frame of episode 0 only.
"""

import glob
import json
import math
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REQUIRED_INFO = {
    "codebase_version": str,
    "robot_type": (str, type(None)),
    "total_episodes": int,
    "total_frames": int,
    "total_tasks": int,
    "chunks_size": int,
    "data_files_size_in_mb": int,
    "video_files_size_in_mb": int,
    "fps": int,
    "splits": dict,
    "data_path": str,
    "video_path": (str, type(None)),
    "features": dict,
}
EPISODE_COLUMNS = [
    "episode_index",
    "tasks",
    "length",
    "data/chunk_index",
    "data/file_index",
    "dataset_from_index",
    "dataset_to_index",
]
STATS_KEYS = ["min", "max", "mean", "std", "count"]
# A feature's `dtype` -> the Arrow type of its values (of the list's items for a vector).
ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "int32": pa.int32(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
# LeRobot's `check_timestamps_sync` tolerance.
TIMESTAMP_TOLERANCE_S = 1e-4


def fail(msg):
    print(f"check_lerobot_v3: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: cannot read JSON: {e}")


def read_table(path):
    try:
        return pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - any pyarrow error is a failure
        fail(f"{path}: pyarrow cannot read it: {e}")


def check(root, want_episodes, want_frames):
    info_path = os.path.join(root, "meta", "info.json")
    info = read_json(info_path)
    for key, typ in REQUIRED_INFO.items():
        expect(key in info, f"{info_path}: missing field {key!r}")
        expect(isinstance(info[key], typ), f"{info_path}: field {key!r} has type {type(info[key]).__name__}")
    expect(info["codebase_version"] == "v3.0", f"{info_path}: codebase_version {info['codebase_version']!r}")
    expect(info["total_episodes"] == want_episodes,
           f"{info_path}: total_episodes {info['total_episodes']} != expected {want_episodes}")
    expect(info["total_frames"] == want_frames,
           f"{info_path}: total_frames {info['total_frames']} != expected {want_frames}")
    expect(info["splits"].get("train") == f"0:{want_episodes}", f"{info_path}: splits {info['splits']}")
    features = info["features"]
    for key, feat in features.items():
        for field in ("dtype", "shape", "names"):
            expect(field in feat, f"{info_path}: feature {key!r} lacks {field!r}")
    for key in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index"):
        expect(key in features, f"{info_path}: features lack {key!r}")

    # Episodes index (possibly several files).
    ep_files = sorted(glob.glob(os.path.join(root, "meta", "episodes", "chunk-*", "file-*.parquet")))
    expect(ep_files, f"{root}/meta/episodes: no chunk-*/file-*.parquet")
    ep_tables = [read_table(p) for p in ep_files]
    for p, t in zip(ep_files, ep_tables):
        for c in EPISODE_COLUMNS:
            expect(c in t.column_names, f"{p}: missing column {c!r} (has {t.column_names})")
    episodes = [row for t in ep_tables for row in t.select(EPISODE_COLUMNS).to_pylist()]
    expect(len(episodes) == want_episodes, f"{ep_files[0]}: {len(episodes)} episodes, expected {want_episodes}")

    # Data files: all feature columns, rows matching the episode ranges.
    by_file = {}
    for e, ep in enumerate(episodes):
        expect(ep["episode_index"] == e, f"{ep_files[0]}: row {e} has episode_index {ep['episode_index']}")
        expect(ep["dataset_to_index"] - ep["dataset_from_index"] == ep["length"],
               f"{ep_files[0]}: episode {e}: range does not match length {ep['length']}")
        by_file.setdefault((ep["data/chunk_index"], ep["data/file_index"]), []).append(ep)
    total_rows = 0
    # The numeric features, whose statistics are recomputed from the values read.
    stats_wanted = [k for k, f in features.items() if f["dtype"] in ("float32", "float64", "int64", "int32", "bool")]
    stats_values = {}
    for (chunk, file), eps in sorted(by_file.items()):
        path = os.path.join(root, info["data_path"].format(chunk_index=chunk, file_index=file))
        table = read_table(path)
        total_rows += table.num_rows
        for key, feat in features.items():
            if feat["dtype"] == "video":
                continue
            expect(key in table.column_names, f"{path}: feature {key!r} has no column")
            typ = table.schema.field(key).type
            n = math.prod(feat["shape"])
            # LeRobot loads a feature of shape [1] as a plain value (datasets.Value), and
            # a list column cannot be cast to one.
            if list(feat["shape"]) == [1]:
                expect(not (pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ)
                            or pa.types.is_large_list(typ)),
                       f"{path}: column {key!r} of shape [1] is a list ({typ}); LeRobot reads a plain value")
            is_list = pa.types.is_fixed_size_list(typ) or pa.types.is_list(typ) or pa.types.is_large_list(typ)
            value_type = typ.value_type if is_list else typ
            want_type = ARROW_TYPES.get(feat["dtype"])
            expect(want_type is not None, f"{info_path}: feature {key!r} has unknown dtype {feat['dtype']!r}")
            expect(value_type == want_type,
                   f"{path}: column {key!r} holds {value_type}, its dtype says {feat['dtype']}")
            if pa.types.is_fixed_size_list(typ):
                expect(typ.list_size == n, f"{path}: column {key!r} has list size {typ.list_size}, shape says {n}")
            elif pa.types.is_list(typ) or pa.types.is_large_list(typ):
                lens = set(pc.list_value_length(table.column(key)).to_pylist())
                expect(lens <= {n}, f"{path}: column {key!r} has list lengths {lens}, shape says {n}")
            else:
                expect(n == 1, f"{path}: column {key!r} is scalar {typ}, shape says {feat['shape']}")
        cols = table.select(["episode_index", "frame_index", "index", "timestamp"]).to_pydict()
        for r, (f, t) in enumerate(zip(cols["frame_index"], cols["timestamp"])):
            expect(abs(t - f / info["fps"]) <= TIMESTAMP_TOLERANCE_S,
                   f"{path}: row {r}: timestamp {t} is not frame_index / fps = {f}/{info['fps']}")
        for key in stats_wanted:
            stats_values.setdefault(key, []).extend(rows_of(table.column(key)))
        for ep in eps:
            e = ep["episode_index"]
            rows = [r for r, x in enumerate(cols["episode_index"]) if x == e]
            expect(len(rows) == ep["length"], f"{path}: episode {e} has {len(rows)} rows, index says {ep['length']}")
            idx = [cols["index"][r] for r in rows]
            expect(idx == list(range(ep["dataset_from_index"], ep["dataset_to_index"])),
                   f"{path}: episode {e}: `index` values do not match dataset_from/to_index")
            expect([cols["frame_index"][r] for r in rows] == list(range(ep["length"])),
                   f"{path}: episode {e}: frame_index is not 0..{ep['length']}")
    expect(total_rows == want_frames, f"{root}/data: {total_rows} rows, expected {want_frames}")
    # LeRobot's loader reads every data/*/*.parquet, not only the files the index names:
    # each must open, and together they must hold exactly the dataset's frames.
    every = sorted(glob.glob(os.path.join(root, "data", "*", "*.parquet")))
    every_rows = sum(read_table(p).num_rows for p in every)
    expect(every_rows == want_frames,
           f"{root}/data: its {len(every)} files hold {every_rows} rows, expected {want_frames}")

    # Tasks.
    tasks_path = os.path.join(root, "meta", "tasks.parquet")
    tasks = read_table(tasks_path)
    expect("task_index" in tasks.column_names, f"{tasks_path}: no task_index column")
    expect(tasks.num_rows == info["total_tasks"], f"{tasks_path}: {tasks.num_rows} rows, total_tasks {info['total_tasks']}")
    string_cols = [f.name for f in tasks.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    expect(string_cols, f"{tasks_path}: no string column with the task text")
    pandas_meta = (tasks.schema.metadata or {}).get(b"pandas")
    if pandas_meta is not None:
        index_cols = json.loads(pandas_meta).get("index_columns", [])
        expect(any(c in string_cols for c in index_cols),
               f"{tasks_path}: pandas index_columns {index_cols} is not the task string column")

    # Stats.
    stats_path = os.path.join(root, "meta", "stats.json")
    stats = read_json(stats_path)
    for key in ("observation.state", "action"):
        expect(key in stats, f"{stats_path}: no entry for {key!r}")
    for key, entry in stats.items():
        for s in STATS_KEYS:
            expect(s in entry, f"{stats_path}: {key!r} lacks {s!r}")
        if key in features:
            n = math.prod(features[key]["shape"])
            for s in ("min", "max", "mean", "std"):
                expect(len(entry[s]) == n, f"{stats_path}: {key}.{s} has {len(entry[s])} values, shape says {n}")
            expect(entry["count"] == [want_frames], f"{stats_path}: {key}.count {entry['count']} != [{want_frames}]")
            if key in stats_values:
                computed = stats_of(stats_values[key])
                for s in ("min", "max", "mean", "std"):
                    for j, (got, want) in enumerate(zip(entry[s], computed[s])):
                        expect(abs(got - want) <= 1e-4 * max(1.0, abs(got), abs(want)),
                               f"{stats_path}: {key}.{s}[{j}] is {got}, the data read gives {want}")

    print(f"ok: {root}: {want_episodes} episodes, {want_frames} frames, {len(by_file)} data files, "
          f"{tasks.num_rows} tasks, {len(features)} features")


def rows_of(column):
    """The rows of a column as vectors of floats (a scalar column's as one-value ones)."""
    values = column.to_pylist()
    return [[float(x) for x in v] if isinstance(v, list) else [float(v)] for v in values]


def stats_of(rows):
    """LeRobot-style stats of a list of equal-length vectors (population std)."""
    n = len(rows)
    dims = list(zip(*rows))
    mean = [sum(d) / n for d in dims]
    std = [math.sqrt(sum((x - m) ** 2 for x in d) / n) for d, m in zip(dims, mean)]
    return {"min": [min(d) for d in dims], "max": [max(d) for d in dims], "mean": mean, "std": std, "count": [n]}


def f32(x):
    return pa.scalar(x, pa.float32()).as_py()


def write(root, success=False):
    fps, obs_dim, act_dim, lengths = 10, 4, 2, [5, 7]
    task = "pick up the cube"
    rows = {k: [] for k in ["observation.state", "action", "timestamp", "frame_index", "episode_index",
                            "index", "task_index", "next.reward", "next.done"]}
    if success:
        rows["next.success"] = []
    i = 0
    for e, n in enumerate(lengths):
        for k in range(n):
            rows["observation.state"].append([f32(i + j / 10) for j in range(obs_dim)])
            rows["action"].append([f32(-(i + j / 10)) for j in range(act_dim)])
            rows["timestamp"].append(f32(k / fps))
            rows["frame_index"].append(k)
            rows["episode_index"].append(e)
            rows["index"].append(i)
            rows["task_index"].append(0)
            rows["next.reward"].append(f32(k / 2))
            rows["next.done"].append(k == n - 1)
            if success:
                rows["next.success"].append(e == 0 and k == n - 1)
            i += 1
    vec = pa.list_(pa.float32())
    types = {"observation.state": vec, "action": vec, "timestamp": pa.float32(), "frame_index": pa.int64(),
             "episode_index": pa.int64(), "index": pa.int64(), "task_index": pa.int64(),
             "next.reward": pa.float32(), "next.done": pa.bool_(), "next.success": pa.bool_()}
    data = pa.table({k: pa.array(v, type=types[k]) for k, v in rows.items()})
    os.makedirs(os.path.join(root, "data", "chunk-000"), exist_ok=True)
    pq.write_table(data, os.path.join(root, "data", "chunk-000", "file-000.parquet"), compression="snappy")

    # Tasks the way pandas writes a DataFrame indexed by task string.
    os.makedirs(os.path.join(root, "meta", "episodes", "chunk-000"), exist_ok=True)
    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "pandas_version": "2.2.0"}
    tasks = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task])})
    tasks = tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    pq.write_table(tasks, os.path.join(root, "meta", "tasks.parquet"))

    stats = {k: stats_of([v if isinstance(v, list) else [v] for v in rows[k]])
             for k in ["observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
                       "task_index", "next.reward"]}
    starts = [sum(lengths[:e]) for e in range(len(lengths))]
    episodes = {
        "episode_index": list(range(len(lengths))),
        "tasks": [[task] for _ in lengths],
        "length": lengths,
        "data/chunk_index": [0] * len(lengths),
        "data/file_index": [0] * len(lengths),
        "dataset_from_index": starts,
        "dataset_to_index": [s + n for s, n in zip(starts, lengths)],
        "meta/episodes/chunk_index": [0] * len(lengths),
        "meta/episodes/file_index": [0] * len(lengths),
        # LeRobot also stores per-episode stats; readers must ignore extra columns.
        "stats/observation.state/mean": [
            stats_of(rows["observation.state"][s:s + n])["mean"] for s, n in zip(starts, lengths)],
    }
    pq.write_table(pa.table(episodes), os.path.join(root, "meta", "episodes", "chunk-000", "file-000.parquet"))

    def feat(dtype, shape, names=None):
        return {"dtype": dtype, "shape": shape, "names": names}

    info = {
        "codebase_version": "v3.0",
        "robot_type": "so100_follower",
        "total_episodes": len(lengths),
        "total_frames": sum(lengths),
        "total_tasks": 1,
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(lengths)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": feat("float32", [obs_dim], [f"joint{j}.pos" for j in range(obs_dim)]),
            "action": feat("float32", [act_dim], {"motors": [f"motor{j}" for j in range(act_dim)]}),
            "timestamp": feat("float32", [1]),
            "frame_index": feat("int64", [1]),
            "episode_index": feat("int64", [1]),
            "index": feat("int64", [1]),
            "task_index": feat("int64", [1]),
            "next.reward": feat("float32", [1]),
            "next.done": feat("bool", [1]),
        },
    }
    if success:
        info["features"]["next.success"] = feat("bool", [1])
    with open(os.path.join(root, "meta", "info.json"), "w") as f:
        json.dump(info, f, indent=4)
    with open(os.path.join(root, "meta", "stats.json"), "w") as f:
        json.dump(stats, f, indent=4)
    print(f"wrote {root}: {len(lengths)} episodes, {sum(lengths)} frames")


def main(argv):
    if len(argv) == 5 and argv[1] == "check":
        try:
            want_episodes, want_frames = int(argv[3]), int(argv[4])
        except ValueError:
            fail("EXPECTED_EPISODES and EXPECTED_FRAMES must be integers")
        check(argv[2], want_episodes, want_frames)
    elif len(argv) == 3 and argv[1] == "write":
        write(argv[2])
    elif len(argv) == 4 and argv[1] == "write" and argv[3] == "--success":
        write(argv[2], success=True)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
