//! A small builder of ONNX graphs over `onnx-protobuf`'s generated messages, and writing the
//! finished model to disk atomically.
//!
//! Models are written at opset [`OPSET`] (LayerNormalization is an opset-17 operator) and IR
//! version [`IR_VERSION`], the IR version that goes with opset 17; ONNX Runtime 1.31 refuses
//! newer IR versions than it knows.

use std::io::Write;
use std::path::Path;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::{dimension, Dimension};
use onnx_protobuf::{
    type_proto, AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

use tinymim_formats::atomic::replace_file;

use super::error::ExportError;

/// The ONNX operator set the exported graphs use.
pub const OPSET: i64 = 17;
/// The ONNX IR version matching [`OPSET`].
pub const IR_VERSION: i64 = 8;
/// The symbolic name of the dynamic batch dimension.
pub const BATCH: &str = "batch";

/// How weights are stored in the file. Computation is float32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    /// Store weights as float32.
    #[default]
    Float32,
    /// Store weights as float16 (half the file size); each is Cast to float32 in the graph.
    Float16,
}

impl WeightDtype {
    /// The flag value: `float32` or `float16`.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Float32 => "float32",
            WeightDtype::Float16 => "float16",
        }
    }
}

/// A node attribute value.
pub enum Attr {
    /// A single integer.
    Int(i64),
    /// A list of integers.
    Ints(Vec<i64>),
    /// A single float.
    Float(f32),
}

/// One dimension of a graph input or output.
#[derive(Clone, Copy)]
pub enum Dim {
    /// The dynamic batch dimension, [`BATCH`].
    Batch,
    /// A fixed size.
    Fixed(usize),
}

/// Builds a [`GraphProto`] node by node, naming intermediate tensors `scope/Op_n`.
pub struct GraphBuilder {
    graph: GraphProto,
    weight_dtype: WeightDtype,
    counter: usize,
}

impl GraphBuilder {
    /// An empty graph whose [`GraphBuilder::weight`]s are stored as `weight_dtype`.
    pub fn new(name: &str, weight_dtype: WeightDtype) -> Self {
        let graph = GraphProto {
            name: name.to_string(),
            ..GraphProto::default()
        };
        GraphBuilder {
            graph,
            weight_dtype,
            counter: 0,
        }
    }

    /// Adds a node with one output, named automatically; returns the output's name.
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) -> String {
        self.counter += 1;
        let output = format!("{scope}/{op}_{}", self.counter);
        self.push_node(&output, op, inputs, attrs, &output);
        output
    }

    /// Adds a node whose one output has the given name (a graph output, say); returns it.
    pub fn named_node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        output: &str,
    ) -> String {
        self.counter += 1;
        let node_name = format!("{scope}/{op}_{}", self.counter);
        self.push_node(&node_name, op, inputs, attrs, output);
        output.to_string()
    }

    fn push_node(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<(&str, Attr)>,
        output: &str,
    ) {
        let attribute = attrs
            .into_iter()
            .map(|(name, value)| {
                let mut a = AttributeProto {
                    name: name.to_string(),
                    ..AttributeProto::default()
                };
                match value {
                    Attr::Int(i) => (a.type_, a.i) = (AttributeType::INT.into(), i),
                    Attr::Ints(v) => (a.type_, a.ints) = (AttributeType::INTS.into(), v),
                    Attr::Float(f) => (a.type_, a.f) = (AttributeType::FLOAT.into(), f),
                }
                a
            })
            .collect();
        self.graph.node.push(NodeProto {
            name: name.to_string(),
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.to_string()],
            attribute,
            ..NodeProto::default()
        });
    }

    /// Adds a model weight, stored in the builder's [`WeightDtype`]; returns the name of its
    /// float32 value in the graph (a Cast's output when stored as float16).
    pub fn weight(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        match self.weight_dtype {
            WeightDtype::Float32 => self.f32_initializer(name, dims, values),
            WeightDtype::Float16 => {
                let raw = values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
                self.initializer(name, dims, DataType::FLOAT16, raw);
                let cast = format!("{name}/f32");
                self.named_node(
                    name,
                    "Cast",
                    &[name],
                    vec![("to", Attr::Int(DataType::FLOAT as i64))],
                    &cast,
                )
            }
        }
    }

    /// Adds a float32 initializer regardless of the weight dtype; returns its name.
    pub fn f32_initializer(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, dims, DataType::FLOAT, raw);
        name.to_string()
    }

    /// Adds a float32 scalar constant; returns its name.
    pub fn scalar(&mut self, scope: &str, value: f32) -> String {
        self.counter += 1;
        let name = format!("{scope}/const_{}", self.counter);
        self.f32_initializer(&name, &[], &[value])
    }

    /// Adds an int64 constant (1-D, or a scalar when `dims` is empty); returns its name.
    pub fn int64s(&mut self, scope: &str, dims: &[usize], values: &[i64]) -> String {
        self.counter += 1;
        let name = format!("{scope}/const_{}", self.counter);
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(&name, dims, DataType::INT64, raw);
        name
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) {
        self.graph.initializer.push(TensorProto {
            name: name.to_string(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            raw_data,
            ..TensorProto::default()
        });
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) {
        self.graph.input.push(float_value_info(name, dims));
    }

    /// Declares a float32 graph output.
    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(float_value_info(name, dims));
    }

    /// The finished graph.
    pub fn finish(self) -> GraphProto {
        self.graph
    }
}

fn float_value_info(name: &str, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match *d {
                Dim::Batch => dimension::Value::DimParam(BATCH.to_string()),
                Dim::Fixed(n) => dimension::Value::DimValue(n as i64),
            }),
            ..Dimension::default()
        })
        .collect();
    let tensor = type_proto::Tensor {
        elem_type: DataType::FLOAT as i32,
        shape: Some(TensorShapeProto {
            dim,
            ..TensorShapeProto::default()
        })
        .into(),
        ..type_proto::Tensor::default()
    };
    ValueInfoProto {
        name: name.to_string(),
        type_: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor)),
            ..TypeProto::default()
        })
        .into(),
        ..ValueInfoProto::default()
    }
}

/// Wraps `graph` in a model at [`OPSET`] / [`IR_VERSION`] with `metadata` as `metadata_props`
/// and writes it to `out` atomically ([`tinymim_formats::atomic::replace_file`]).
pub fn write_model(
    graph: GraphProto,
    metadata: &[(&str, String)],
    out: &Path,
) -> Result<(), ExportError> {
    let model = ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
            ..Default::default()
        }],
        producer_name: "tinymim-extract".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(graph).into(),
        metadata_props: metadata
            .iter()
            .map(|(key, value)| StringStringEntryProto {
                key: key.to_string(),
                value: value.clone(),
                ..Default::default()
            })
            .collect(),
        ..ModelProto::default()
    };
    let bytes = model.compute_size();
    if bytes > i32::MAX as u64 {
        return Err(ExportError::TooLarge { bytes });
    }
    replace_file(out, |tmp| {
        let write_err = |source: std::io::Error| ExportError::Write {
            path: out.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(tmp).map_err(write_err)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        model
            .write_to_writer(&mut writer)
            .map_err(|e| write_err(std::io::Error::other(e)))?;
        writer.flush().map_err(write_err)
    })
}
