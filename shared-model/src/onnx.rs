//! The slice of the ONNX protobuf schema we write and check, and a small graph builder.
//!
//! burn cannot export ONNX, and our graphs use a dozen operators, so we declare the
//! messages ourselves with `prost` derives (field numbers from `onnx.proto`, IR version 8)
//! rather than pulling a protobuf compiler or a large ONNX crate into the trainer. Only
//! the fields we set or inspect are declared; protobuf decoding skips the others, so
//! files written by other tools still decode for inspection.
//!
//! Operators used (default domain, opset 17): `MatMul`, `Add`, `Mul`, `Sigmoid`, `Tanh`,
//! `Relu`, `Sin`, `Cos`, `Concat`, `Gather`, `LayerNormalization`, `Squeeze`, `Clip`.

use prost::Message;

/// ONNX IR version 8 (ONNX 1.10+); with opset 17 below, onnxruntime ≥ 1.12 and tract.
pub const IR_VERSION: i64 = 8;
/// Opset 17 is the first with `LayerNormalization`.
pub const OPSET_VERSION: i64 = 17;

/// `TensorProto.DataType` values we use.
pub const DATA_TYPE_FLOAT: i32 = 1;
pub const DATA_TYPE_INT64: i32 = 7;

/// `AttributeProto.AttributeType` values we use.
const ATTRIBUTE_FLOAT: i32 = 1;
const ATTRIBUTE_INT: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes; what we write for float tensors (the compact form).
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(oneof = "DimensionValue", tags = "1, 2")]
    pub value: Option<DimensionValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimensionValue {
    #[prost(int64, tag = "1")]
    Fixed(i64),
    #[prost(string, tag = "2")]
    Symbolic(String),
}

/// A dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq)]
pub enum Dim {
    Fixed(usize),
    /// A named dynamic dimension (the batch axes).
    Symbolic(&'static str),
}

impl ModelProto {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode_to_vec()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        ModelProto::decode(bytes)
    }
}

impl TensorProto {
    /// The float elements, from `raw_data` or `float_data`.
    pub fn floats(&self) -> Option<Vec<f32>> {
        if self.data_type != DATA_TYPE_FLOAT {
            return None;
        }
        if !self.raw_data.is_empty() {
            if !self.raw_data.len().is_multiple_of(4) {
                return None;
            }
            return Some(
                self.raw_data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            );
        }
        Some(self.float_data.clone())
    }

    /// The int64 elements, from `raw_data` or `int64_data` (what other tools re-serialise
    /// to, and ours); `None` for another type or a `raw_data` of a partial element.
    pub fn int64s(&self) -> Option<Vec<i64>> {
        if self.data_type != DATA_TYPE_INT64 {
            return None;
        }
        if self.raw_data.is_empty() {
            return Some(self.int64_data.clone());
        }
        if !self.raw_data.len().is_multiple_of(8) {
            return None;
        }
        Some(
            self.raw_data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
        )
    }

    /// The element count its dims declare; `None` for a negative dim or a count past
    /// `usize` (a corrupt or hostile header, which must be an error, not a panic).
    pub fn num_elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        })
    }
}

impl ValueInfoProto {
    /// Declared dimensions (`None` for a symbolic one) and element type.
    pub fn dims(&self) -> Option<(i32, Vec<Option<usize>>)> {
        let tt = self.r#type.as_ref()?.tensor_type.as_ref()?;
        let dims = tt
            .shape
            .as_ref()?
            .dim
            .iter()
            .map(|d| match d.value {
                Some(DimensionValue::Fixed(n)) if n >= 0 => Some(n as usize),
                _ => None,
            })
            .collect();
        Some((tt.elem_type, dims))
    }
}

/// Builds one graph: named initializers, nodes in topological order, typed inputs and
/// outputs. Node and intermediate names are generated; initializer names are given, so
/// that a file can be read back by parameter name.
pub struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.to_string(),
                ..Default::default()
            },
            counter: 0,
        }
    }

    fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
        let dim = dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::Fixed(n) => DimensionValue::Fixed(*n as i64),
                    Dim::Symbolic(s) => DimensionValue::Symbolic(s.to_string()),
                }),
            })
            .collect();
        ValueInfoProto {
            name: name.to_string(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type,
                    shape: Some(TensorShapeProto { dim }),
                }),
            }),
        }
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) -> String {
        self.graph
            .input
            .push(Self::value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Declares `value` (a node output) as the graph output `name` via an `Identity`-free
    /// rename: the producing node's output is renamed in place.
    pub fn output(&mut self, value: &str, name: &str, elem_type: i32, dims: &[Dim]) {
        for node in &mut self.graph.node {
            for o in &mut node.output {
                if o == value {
                    *o = name.to_string();
                }
            }
            for i in &mut node.input {
                if i == value {
                    *i = name.to_string();
                }
            }
        }
        self.graph
            .output
            .push(Self::value_info(name, elem_type, dims));
    }

    /// A float initializer (stored as little-endian `raw_data`).
    pub fn floats(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "initializer {name}: {dims:?} does not match {} values",
            data.len()
        );
        let raw_data = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_FLOAT,
            raw_data,
            name: name.to_string(),
            ..Default::default()
        });
        name.to_string()
    }

    pub fn int64s(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DATA_TYPE_INT64,
            int64_data: data.to_vec(),
            name: name.to_string(),
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node with one output and returns the output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.counter += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.counter);
        let attribute = attrs
            .iter()
            .map(|(name, a)| match *a {
                Attr::Int(i) => AttributeProto {
                    name: name.to_string(),
                    i,
                    r#type: ATTRIBUTE_INT,
                    ..Default::default()
                },
                Attr::Float(f) => AttributeProto {
                    name: name.to_string(),
                    f,
                    r#type: ATTRIBUTE_FLOAT,
                    ..Default::default()
                },
            })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("n{}_{}", self.counter, op),
            op_type: op.to_string(),
            attribute,
            domain: String::new(),
        });
        out
    }

    pub fn finish(self, doc: &str) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "expo-robot".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_string(),
            graph: Some(self.graph),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET_VERSION,
            }],
            metadata_props: vec![],
        }
    }
}

/// A node attribute.
#[derive(Clone, Copy, Debug)]
pub enum Attr {
    Int(i64),
    Float(f32),
}

/// Whether every one of `values` is the graph constant `value` (to 1e-6 of it, or of 1
/// below 1): the bundle check and the native backend, which builds the constants in,
/// take a constant alike.
pub fn holds_constant(values: &[f32], value: f32) -> bool {
    values
        .iter()
        .all(|x| (x - value).abs() <= 1e-6 * value.abs().max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_through_protobuf() {
        let mut g = GraphBuilder::new("t");
        let x = g.input(
            "x",
            DATA_TYPE_FLOAT,
            &[Dim::Symbolic("batch"), Dim::Fixed(2)],
        );
        let w = g.floats("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, f32::MIN_POSITIVE]);
        let y = g.node("MatMul", &[&x, &w], &[]);
        g.output(
            &y,
            "y",
            DATA_TYPE_FLOAT,
            &[Dim::Symbolic("batch"), Dim::Fixed(3)],
        );
        let m = g.finish("doc");
        let back = ModelProto::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        let graph = back.graph.unwrap();
        assert_eq!(graph.node[0].output, ["y"]);
        assert_eq!(
            graph.initializer[0].floats().unwrap(),
            [1.0, 2.0, 3.0, 4.0, 5.0, f32::MIN_POSITIVE]
        );
        assert_eq!(
            graph.output[0].dims().unwrap(),
            (DATA_TYPE_FLOAT, vec![None, Some(3)])
        );
    }
}
