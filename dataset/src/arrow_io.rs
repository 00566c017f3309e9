//! Arrow/parquet plumbing: building columns, decoding columns with full type
//! checks (never panicking on foreign data), and atomic parquet/JSON writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, FixedSizeListArray, Float32Array, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::DatasetError;

/// Arrow type of a vector column as written: `FixedSizeList<Float32>[dim]`, or plain
/// `Float32` for one value per row (LeRobot loads a feature of shape `[1]` as a plain
/// value, and cannot cast a list column to one).
pub(crate) fn f32_vec_type(dim: usize) -> DataType {
    if dim == 1 {
        return DataType::Float32;
    }
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        dim as i32,
    )
}

/// Build the column [`f32_vec_type`] describes from row-major `values`.
pub(crate) fn f32_vec_array(values: &[f32], dim: usize) -> Result<ArrayRef, String> {
    if dim == 1 {
        return Ok(Arc::new(Float32Array::from(values.to_vec())));
    }
    let size = i32::try_from(dim).map_err(|_| format!("dimension {dim} too large"))?;
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let child: ArrayRef = Arc::new(Float32Array::from(values.to_vec()));
    FixedSizeListArray::try_new(field, size, child, None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| e.to_string())
}

fn no_nulls(arr: &dyn Array, what: &str) -> Result<(), String> {
    match arr.null_count() {
        0 => Ok(()),
        n => Err(format!("{n} null {what}; nulls are not allowed")),
    }
}

/// Decode a flat float32/float64 array (no nulls) into f32.
fn flat_floats(arr: &dyn Array) -> Result<Vec<f32>, String> {
    no_nulls(arr, "values")?;
    if let Some(a) = arr.as_primitive_opt::<Float32Type>() {
        Ok(a.values().to_vec())
    } else if let Some(a) = arr.as_primitive_opt::<Float64Type>() {
        // A finite float64 beyond f32's range would read as inf, and be refused as a
        // non-finite value the file does not hold.
        a.values()
            .iter()
            .map(|&v| {
                let x = v as f32;
                if v.is_finite() && !x.is_finite() {
                    Err(format!("holds {v:e}, beyond float32's range"))
                } else {
                    Ok(x)
                }
            })
            .collect()
    } else {
        Err(format!(
            "has element type {}, expected float32",
            arr.data_type()
        ))
    }
}

/// Decode a float column with `dim` values per row into a row-major `Vec<f32>`.
///
/// Accepts `FixedSizeList`, `List` and `LargeList` of float32/float64, and a
/// plain float column when `dim == 1`. `first_row`: the array's first row's place in
/// its file, for errors.
pub(crate) fn floats(arr: &dyn Array, dim: usize, first_row: usize) -> Result<Vec<f32>, String> {
    no_nulls(arr, "rows")?;
    let rows = arr.len();
    match arr.data_type() {
        DataType::Float32 | DataType::Float64 if dim == 1 => flat_floats(arr),
        DataType::FixedSizeList(_, n) => {
            if usize::try_from(*n).ok() != Some(dim) {
                return Err(format!(
                    "has {n} values per row, info.json declares shape [{dim}]"
                ));
            }
            let a = arr
                .as_fixed_size_list_opt()
                .ok_or("not a fixed-size list array")?;
            let v = flat_floats(a.values().as_ref())?;
            if rows.checked_mul(dim) != Some(v.len()) {
                return Err(format!("has {} values for {rows} rows of {dim}", v.len()));
            }
            Ok(v)
        }
        DataType::List(_) => {
            let a = arr.as_list_opt::<i32>().ok_or("not a list array")?;
            list_floats(a.value_offsets(), a.values().as_ref(), dim, first_row)
        }
        DataType::LargeList(_) => {
            let a = arr.as_list_opt::<i64>().ok_or("not a large list array")?;
            list_floats(a.value_offsets(), a.values().as_ref(), dim, first_row)
        }
        other if dim == 1 => Err(format!("has type {other}, expected float32")),
        other => Err(format!(
            "has type {other}, expected a float32 list of {dim} values per row"
        )),
    }
}

fn list_floats<O: Copy + TryInto<usize>>(
    offsets: &[O],
    values: &dyn Array,
    dim: usize,
    first_row: usize,
) -> Result<Vec<f32>, String> {
    let to_usize = |o: O| o.try_into().map_err(|_| "negative list offset".to_string());
    let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
        return Ok(Vec::new());
    };
    for (row, w) in offsets.windows(2).enumerate() {
        let len = to_usize(w[1])?
            .checked_sub(to_usize(w[0])?)
            .ok_or("decreasing list offsets")?;
        if len != dim {
            return Err(format!(
                "row {} of this file has {len} values, info.json declares shape [{dim}]",
                first_row + row
            ));
        }
    }
    let (start, end) = (to_usize(first)?, to_usize(last)?);
    if end > values.len() || start > end {
        return Err("list offsets out of bounds".into());
    }
    flat_floats(values.slice(start, end - start).as_ref())
}

/// Decode a boolean column (no nulls).
pub(crate) fn bools(arr: &dyn Array) -> Result<Vec<bool>, String> {
    no_nulls(arr, "rows")?;
    let a = arr
        .as_boolean_opt()
        .ok_or_else(|| format!("has type {}, expected bool", arr.data_type()))?;
    Ok(a.values().iter().collect())
}

/// Decode an integer column (int64, or int32/uint32/uint64 that fit) into i64.
pub(crate) fn ints(arr: &dyn Array) -> Result<Vec<i64>, String> {
    no_nulls(arr, "rows")?;
    if let Some(a) = arr.as_primitive_opt::<Int64Type>() {
        Ok(a.values().to_vec())
    } else if let Some(a) = arr.as_primitive_opt::<Int32Type>() {
        Ok(a.values().iter().map(|&v| i64::from(v)).collect())
    } else if let Some(a) = arr.as_primitive_opt::<UInt32Type>() {
        Ok(a.values().iter().map(|&v| i64::from(v)).collect())
    } else if let Some(a) = arr.as_primitive_opt::<UInt64Type>() {
        a.values()
            .iter()
            .map(|&v| i64::try_from(v).map_err(|_| format!("value {v} overflows int64")))
            .collect()
    } else {
        Err(format!("has type {}, expected int64", arr.data_type()))
    }
}

/// Decode a string column (utf8, large utf8 or utf8 view; no nulls).
pub(crate) fn strings(arr: &dyn Array) -> Result<Vec<String>, String> {
    no_nulls(arr, "rows")?;
    if let Some(a) = arr.as_string_opt::<i32>() {
        Ok(a.iter().flatten().map(str::to_owned).collect())
    } else if let Some(a) = arr.as_string_opt::<i64>() {
        Ok(a.iter().flatten().map(str::to_owned).collect())
    } else if let Some(a) = arr.as_string_view_opt() {
        Ok(a.iter().flatten().map(str::to_owned).collect())
    } else {
        Err(format!("has type {}, expected string", arr.data_type()))
    }
}

/// Read every record batch of a parquet file.
///
/// Garbage, truncated files and decoder panics (defence in depth against
/// malformed input) all become [`DatasetError::Parquet`] naming the file.
pub(crate) fn read_parquet(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), DatasetError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DatasetError::Missing {
                path: path.to_owned(),
                what: "parquet file (not found)".into(),
            }
        } else {
            DatasetError::io(path, "opening parquet file", e)
        }
    })?;
    let read = || -> Result<(SchemaRef, Vec<RecordBatch>), String> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| {
            format!("cannot open (file truncated, not parquet, or corrupt footer?): {e}")
        })?;
        let schema = builder.schema().clone();
        let reader = builder.build().map_err(|e| format!("cannot decode: {e}"))?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cannot decode data pages (file truncated or corrupt?): {e}"))?;
        Ok((schema, batches))
    };
    match catch_unwind(AssertUnwindSafe(read)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(DatasetError::parquet(path, "read", msg)),
        Err(_) => Err(DatasetError::parquet(
            path,
            "read",
            "decoder panicked on malformed data (file corrupt?)",
        )),
    }
}

/// Writer properties used for every file: snappy, optional key/value metadata.
pub(crate) fn writer_props(kv: Option<Vec<KeyValue>>) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(kv)
        .build()
}

/// A parquet file being written batch by batch (one row group per batch).
pub(crate) struct ParquetOut {
    pub(crate) path: PathBuf,
    writer: ArrowWriter<File>,
}

impl ParquetOut {
    /// Create `path` (which must not exist yet: data files are never overwritten).
    pub(crate) fn create_new(
        path: &Path,
        schema: SchemaRef,
        kv: Option<Vec<KeyValue>>,
    ) -> Result<Self, DatasetError> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| DatasetError::io(parent, "creating directory", e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| DatasetError::io(path, "creating new parquet file", e))?;
        let writer = ArrowWriter::try_new(file, schema, Some(writer_props(kv)))
            .map_err(|e| DatasetError::parquet(path, "write", e))?;
        Ok(Self {
            path: path.to_owned(),
            writer,
        })
    }

    /// Write `batch` as its own row group.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), DatasetError> {
        self.writer
            .write(batch)
            .and_then(|()| self.writer.flush())
            .map_err(|e| DatasetError::parquet(&self.path, "write", e))
    }

    pub(crate) fn bytes_written(&self) -> usize {
        self.writer.bytes_written()
    }

    /// Write the footer and fsync.
    pub(crate) fn close(self) -> Result<PathBuf, DatasetError> {
        let file = self
            .writer
            .into_inner()
            .map_err(|e| DatasetError::parquet(&self.path, "write", e))?;
        file.sync_all()
            .map_err(|e| DatasetError::io(&self.path, "syncing parquet file", e))?;
        // The file's name in its chunk directory, and a new chunk directory's in
        // `data/`: without them a power cut can lose a file the index refers to.
        if let Some(chunk) = self.path.parent() {
            sync_dir(chunk)?;
            if let Some(data) = chunk.parent() {
                sync_dir(data)?;
            }
        }
        Ok(self.path)
    }
}

/// [`crate::sync_dir`], its error naming `dir`.
fn sync_dir(dir: &Path) -> Result<(), DatasetError> {
    crate::sync_dir(dir).map_err(|e| DatasetError::io(dir, "syncing directory", e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn rename(tmp: &Path, path: &Path) -> Result<(), DatasetError> {
    fs::rename(tmp, path)
        .map_err(|e| DatasetError::io(path, "renaming temporary file into place", e))
}

/// A file written in full and synced under a temporary name beside `path`, waiting to
/// replace `path` atomically ([`Staged::commit`]). Metadata is staged file by file and
/// committed together, so that running out of disk while writing it (the likeliest
/// moment: at the end of a recording) leaves the previous metadata in place.
#[must_use = "a staged file replaces nothing until it is committed"]
pub(crate) struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

impl Staged {
    /// Renames the file into place and syncs its directory, so that the rename
    /// survives a power cut (`info.json`'s is the dataset's commit).
    pub(crate) fn commit(self) -> Result<(), DatasetError> {
        rename(&self.tmp, &self.path)?;
        match self.path.parent() {
            Some(dir) => sync_dir(dir),
            None => Ok(()),
        }
    }
}

impl Drop for Staged {
    /// An uncommitted file is removed (after a commit there is nothing left to remove).
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Stage a single-row-group parquet file holding `batch` to replace `path`.
pub(crate) fn stage_parquet(
    path: &Path,
    batch: &RecordBatch,
    kv: Option<Vec<KeyValue>>,
) -> Result<Staged, DatasetError> {
    let tmp = tmp_path(path);
    // A stale temp file from a crashed writer is ours to replace.
    let _ = fs::remove_file(&tmp);
    let mut out = ParquetOut::create_new(&tmp, batch.schema(), kv)?;
    out.write(batch)?;
    out.close()?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

/// Stage pretty-printed JSON to replace `path`.
pub(crate) fn stage_json(path: &Path, value: &serde_json::Value) -> Result<Staged, DatasetError> {
    let tmp = tmp_path(path);
    let mut text = serde_json::to_string_pretty(value).map_err(|e| DatasetError::Json {
        path: path.to_owned(),
        what: "serializing".into(),
        error: e,
    })?;
    text.push('\n');
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| DatasetError::io(&tmp, "writing temporary file", e))?;
    Ok(Staged {
        tmp,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Float64Array;

    /// A finite float64 value beyond f32's range is named as that; it read as inf and
    /// was refused as a non-finite value the file does not hold.
    #[test]
    fn a_float64_beyond_float32s_range_is_named() {
        let a = Float64Array::from(vec![0.5, 1e39]);
        let e = floats(&a, 1, 0).unwrap_err();
        assert!(e.contains("holds 1e39, beyond float32's range"), "{e}");
        let ok = Float64Array::from(vec![0.5, f64::NAN, -2.0]);
        let got = floats(&ok, 1, 0).unwrap();
        assert_eq!((got[0], got[2]), (0.5, -2.0));
        assert!(got[1].is_nan());
    }
}
