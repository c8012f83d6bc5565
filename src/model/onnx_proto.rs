//! The few ONNX protobuf fields croco edits, on the wire format itself: a
//! bundle graph's weight inputs turned into placeholder initializers, which
//! the session replaces by the loaded tensors (ONNX Runtime's
//! `AddInitializer`).
//!
//! Why: ONNX Runtime's CPU GEMMs repack their weight operand into the
//! kernel's layout on every call unless the weight is an initializer, which
//! they pack once when the session is built. Packing costs a pass over the
//! weights per call: at the handful of rows of a decode step it is as much
//! as the multiplication (measured on a 2-core AVX-512 machine: a 1,024 ×
//! 4,096 GEMM of 32 rows runs at 126 GFLOP/s with the weight as an input and
//! 197 GFLOP/s packed). Bundles keep the weights as graph inputs, so that one
//! copy can be bound to several sessions on a device; the CPU's decode
//! session is rewritten on load instead.
//!
//! The CPU's decode-step session also has its `GroupQueryAttention` nodes
//! swapped for croco's own kernel ([`swap_operator`],
//! [`super::decode_attention`]).
//!
//! Only what the rewrites need is decoded (`ModelProto.graph` and
//! `opset_import`, `GraphProto.input` names and nodes, `NodeProto.op_type`
//! and `domain`); every other field is copied byte for byte.

/// `ModelProto.graph`.
const MODEL_GRAPH: u64 = 7;
/// `ModelProto.opset_import`.
const MODEL_OPSET_IMPORT: u64 = 8;
/// `GraphProto.node`.
const GRAPH_NODE: u64 = 1;
/// `NodeProto` fields.
const NODE_OP_TYPE: u64 = 4;
const NODE_DOMAIN: u64 = 7;
/// `OperatorSetIdProto` fields.
const OPSET_DOMAIN: u64 = 1;
const OPSET_VERSION: u64 = 2;
/// `GraphProto.initializer`.
const GRAPH_INITIALIZER: u64 = 5;
/// `GraphProto.input`.
const GRAPH_INPUT: u64 = 11;
/// `ValueInfoProto.name`.
const VALUE_INFO_NAME: u64 = 1;
/// `TensorProto` fields.
const TENSOR_DIMS: u64 = 1;
const TENSOR_DATA_TYPE: u64 = 2;
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;
/// The external-data location written into the placeholders: the working
/// directory, which exists (ONNX Runtime checks that a location does when it
/// loads a graph) and is never read, every placeholder being replaced by a
/// tensor supplied from memory.
const LOCATION: &str = ".";

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

/// A weight input to turn into an initializer.
pub struct WeightInput<'a> {
    /// The graph input's name.
    pub name: &'a str,
    /// Its shape.
    pub dims: &'a [i64],
    /// Its ONNX element type (`TensorProto.DataType`).
    pub data_type: i32,
}

/// Why a graph could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The bytes are not a well-formed protobuf message.
    #[error("malformed ONNX protobuf at byte {offset}: {problem}")]
    Malformed { offset: usize, problem: &'static str },
    /// The graph has no input of that name.
    #[error("the graph has no input `{0}`")]
    NoSuchInput(String),
    /// The model has no graph.
    #[error("the model has no graph")]
    NoGraph,
}

/// An operator, by domain and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    pub domain: &'a str,
    pub op_type: &'a str,
}

/// `model` with every node of operator `from` turned into one of `to`
/// (inputs, outputs and attributes as they stand), and `to`'s domain
/// imported at `version`; returns the rewritten model and how many nodes
/// were swapped.
pub fn swap_operator(model: &[u8], from: Op<'_>, to: Op<'_>, version: u64) -> Result<(Vec<u8>, usize), ProtoError> {
    let mut out = Vec::with_capacity(model.len() + 64);
    let mut swapped = None;
    for field in Fields::new(model, 0) {
        let field = field?;
        if field.number == MODEL_GRAPH && field.wire == LEN {
            let (graph, count) = swap_in_graph(field.payload, field.payload_offset, from, to)?;
            put_len(&mut out, MODEL_GRAPH, &graph);
            swapped = Some(count);
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    let swapped = swapped.ok_or(ProtoError::NoGraph)?;
    let mut opset = Vec::new();
    put_len(&mut opset, OPSET_DOMAIN, to.domain.as_bytes());
    put_varint_field(&mut opset, OPSET_VERSION, version);
    put_len(&mut out, MODEL_OPSET_IMPORT, &opset);
    Ok((out, swapped))
}

fn swap_in_graph(graph: &[u8], base: usize, from: Op<'_>, to: Op<'_>) -> Result<(Vec<u8>, usize), ProtoError> {
    let mut out = Vec::with_capacity(graph.len() + 64);
    let mut swapped = 0;
    for field in Fields::new(graph, base) {
        let field = field?;
        if field.number == GRAPH_NODE && field.wire == LEN && node_op(field.payload, field.payload_offset)? == from {
            let mut node = Vec::with_capacity(field.payload.len() + 16);
            for node_field in Fields::new(field.payload, field.payload_offset) {
                let node_field = node_field?;
                if node_field.number != NODE_OP_TYPE && node_field.number != NODE_DOMAIN {
                    node.extend_from_slice(node_field.raw);
                }
            }
            put_len(&mut node, NODE_OP_TYPE, to.op_type.as_bytes());
            put_len(&mut node, NODE_DOMAIN, to.domain.as_bytes());
            put_len(&mut out, GRAPH_NODE, &node);
            swapped += 1;
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    Ok((out, swapped))
}

/// A `NodeProto`'s operator (an absent domain is the default one, "").
fn node_op(node: &[u8], base: usize) -> Result<Op<'_>, ProtoError> {
    let mut op = Op { domain: "", op_type: "" };
    for field in Fields::new(node, base) {
        let field = field?;
        let text = || std::str::from_utf8(field.payload).unwrap_or("");
        match (field.number, field.wire) {
            (NODE_OP_TYPE, LEN) => op.op_type = text(),
            (NODE_DOMAIN, LEN) => op.domain = text(),
            _ => {}
        }
    }
    Ok(op)
}

/// `model` (a serialized `ModelProto`) with the graph inputs in `weights`
/// removed and declared instead as placeholder initializers (external data
/// that is never read), to be replaced with ONNX Runtime's `AddInitializer`.
pub fn weights_as_initializers(model: &[u8], weights: &[WeightInput<'_>]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(model.len() + weights.len() * 96);
    let mut found_graph = false;
    for field in Fields::new(model, 0) {
        let field = field?;
        if field.number == MODEL_GRAPH && field.wire == LEN {
            found_graph = true;
            let graph = rewrite_graph(field.payload, field.payload_offset, weights)?;
            put_len(&mut out, MODEL_GRAPH, &graph);
        } else {
            out.extend_from_slice(field.raw);
        }
    }
    if !found_graph {
        return Err(ProtoError::NoGraph);
    }
    Ok(out)
}

fn rewrite_graph(graph: &[u8], base: usize, weights: &[WeightInput<'_>]) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::with_capacity(graph.len() + weights.len() * 96);
    let mut removed = vec![false; weights.len()];
    for field in Fields::new(graph, base) {
        let field = field?;
        if field.number == GRAPH_INPUT && field.wire == LEN {
            let name = value_info_name(field.payload, field.payload_offset)?;
            if let Some(i) = weights.iter().position(|w| name == Some(w.name.as_bytes())) {
                removed[i] = true;
                continue;
            }
        }
        out.extend_from_slice(field.raw);
    }
    if let Some(i) = removed.iter().position(|r| !r) {
        return Err(ProtoError::NoSuchInput(weights[i].name.to_string()));
    }
    for weight in weights {
        put_len(&mut out, GRAPH_INITIALIZER, &external_tensor(weight));
    }
    Ok(out)
}

/// The `name` of a `ValueInfoProto`.
fn value_info_name(message: &[u8], base: usize) -> Result<Option<&[u8]>, ProtoError> {
    for field in Fields::new(message, base) {
        let field = field?;
        if field.number == VALUE_INFO_NAME && field.wire == LEN {
            return Ok(Some(field.payload));
        }
    }
    Ok(None)
}

/// A placeholder `TensorProto` of `weight`'s name, shape and type, its data external.
fn external_tensor(weight: &WeightInput<'_>) -> Vec<u8> {
    let mut tensor = Vec::with_capacity(64 + weight.name.len());
    // Tensor dims are never negative; an int64 field's varint is its two's-complement bits.
    for &dim in weight.dims {
        put_varint_field(&mut tensor, TENSOR_DIMS, dim as u64);
    }
    // A negative enum is sign-extended to ten bytes on the wire; ONNX's types are all positive.
    put_varint_field(&mut tensor, TENSOR_DATA_TYPE, weight.data_type as u64);
    put_len(&mut tensor, TENSOR_NAME, weight.name.as_bytes());
    let mut entry = Vec::new();
    put_len(&mut entry, 1, b"location");
    put_len(&mut entry, 2, LOCATION.as_bytes());
    put_len(&mut tensor, TENSOR_EXTERNAL_DATA, &entry);
    put_varint_field(&mut tensor, TENSOR_DATA_LOCATION, EXTERNAL);
    tensor
}

/// One field of a message: its number, wire type, payload (for
/// length-delimited fields) and its bytes as they stand (tag included).
struct Field<'a> {
    number: u64,
    wire: u64,
    payload: &'a [u8],
    payload_offset: usize,
    raw: &'a [u8],
}

/// The fields of a message, in order; `base` is the message's offset in the
/// whole file (for error messages).
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    base: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], base: usize) -> Self {
        Fields { bytes, at: 0, base, failed: false }
    }

    fn malformed(&mut self, problem: &'static str) -> Option<Result<Field<'a>, ProtoError>> {
        self.failed = true;
        Some(Err(ProtoError::Malformed { offset: self.base + self.at, problem }))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at >= self.bytes.len() {
            return None;
        }
        let start = self.at;
        let Some((tag, after_tag)) = varint(self.bytes, start) else { return self.malformed("truncated tag") };
        let (number, wire) = (tag >> 3, tag & 7);
        let (payload_start, end) = match wire {
            VARINT => match varint(self.bytes, after_tag) {
                Some((_, end)) => (after_tag, end),
                None => return self.malformed("truncated varint"),
            },
            FIXED64 => (after_tag, after_tag + 8),
            FIXED32 => (after_tag, after_tag + 4),
            LEN => match varint(self.bytes, after_tag) {
                Some((length, payload_start)) => match usize::try_from(length) {
                    Ok(length) => (payload_start, payload_start.saturating_add(length)),
                    Err(_) => return self.malformed("length out of range"),
                },
                None => return self.malformed("truncated length"),
            },
            _ => return self.malformed("unsupported wire type"),
        };
        if end > self.bytes.len() {
            return self.malformed("field runs past the end of its message");
        }
        self.at = end;
        Some(Ok(Field {
            number,
            wire,
            payload: &self.bytes[payload_start..end],
            payload_offset: self.base + payload_start,
            raw: &self.bytes[start..end],
        }))
    }
}

/// The varint at `at` and the offset after it.
fn varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_varint_field(out: &mut Vec<u8>, number: u64, value: u64) {
    put_varint(out, number << 3 | VARINT);
    put_varint(out, value);
}

fn put_len(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
    put_varint(out, number << 3 | LEN);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_info(name: &str) -> Vec<u8> {
        let mut info = Vec::new();
        put_len(&mut info, VALUE_INFO_NAME, name.as_bytes());
        put_len(&mut info, 2, &[0x0a, 0x00]); // a type, copied as it stands
        info
    }

    fn model(inputs: &[&str]) -> Vec<u8> {
        let mut graph = Vec::new();
        put_len(&mut graph, 2, b"g"); // GraphProto.name
        for input in inputs {
            put_len(&mut graph, GRAPH_INPUT, &value_info(input));
        }
        let mut model = Vec::new();
        put_varint_field(&mut model, 1, 9); // ir_version
        put_len(&mut model, MODEL_GRAPH, &graph);
        model
    }

    fn graph_fields(model: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let graph = Fields::new(model, 0).map(Result::unwrap).find(|f| f.number == MODEL_GRAPH).unwrap();
        Fields::new(graph.payload, 0).map(|f| f.unwrap()).map(|f| (f.number, f.payload.to_vec())).collect()
    }

    #[test]
    fn weight_inputs_become_external_initializers_and_the_rest_is_kept() {
        let before = model(&["input_ids", "w", "mask"]);
        let weight = WeightInput { name: "w", dims: &[4096, 300], data_type: 1 };
        let after = weights_as_initializers(&before, &[weight]).unwrap();
        let fields = graph_fields(&after);
        let inputs: Vec<&[u8]> = fields.iter().filter(|(n, _)| *n == GRAPH_INPUT).map(|(_, p)| p.as_slice()).collect();
        assert_eq!(inputs, [value_info("input_ids").as_slice(), value_info("mask").as_slice()]);
        let initializers: Vec<&Vec<u8>> =
            fields.iter().filter(|(n, _)| *n == GRAPH_INITIALIZER).map(|(_, p)| p).collect();
        assert_eq!(initializers.len(), 1);
        let tensor: Vec<(u64, Vec<u8>)> =
            Fields::new(initializers[0], 0).map(|f| f.unwrap()).map(|f| (f.number, f.raw.to_vec())).collect();
        let dims: Vec<u64> =
            tensor.iter().filter(|(n, _)| *n == TENSOR_DIMS).map(|(_, raw)| varint(raw, 1).unwrap().0).collect();
        assert_eq!(dims, [4096, 300]);
        let name = Fields::new(initializers[0], 0).map(|f| f.unwrap()).find(|f| f.number == TENSOR_NAME).unwrap();
        assert_eq!(name.payload, b"w");
        // The fields outside the graph are unchanged.
        assert_eq!(after[..2], before[..2]);
    }

    fn node(op_type: &str, domain: &str) -> Vec<u8> {
        let mut node = Vec::new();
        put_len(&mut node, 1, b"x"); // an input
        put_len(&mut node, NODE_OP_TYPE, op_type.as_bytes());
        put_len(&mut node, 5, &[0x0a, 0x01, b'a']); // an attribute, copied as it stands
        put_len(&mut node, NODE_DOMAIN, domain.as_bytes());
        node
    }

    #[test]
    fn the_swapped_operator_keeps_its_inputs_and_attributes_and_its_domain_is_imported() {
        let mut graph = Vec::new();
        put_len(&mut graph, GRAPH_NODE, &node("GroupQueryAttention", "com.microsoft"));
        put_len(&mut graph, GRAPH_NODE, &node("MatMul", ""));
        let mut before = Vec::new();
        put_len(&mut before, MODEL_GRAPH, &graph);
        let from = Op { domain: "com.microsoft", op_type: "GroupQueryAttention" };
        let to = Op { domain: "ai.croco", op_type: "DecodeAttention" };
        let (after, swapped) = swap_operator(&before, from, to, 1).unwrap();
        assert_eq!(swapped, 1);
        let nodes: Vec<Vec<u8>> =
            graph_fields(&after).into_iter().filter(|(n, _)| *n == GRAPH_NODE).map(|(_, p)| p).collect();
        assert_eq!(node_op(&nodes[0], 0).unwrap(), to);
        assert_eq!(nodes[1], node("MatMul", ""));
        let kept: Vec<u64> = Fields::new(&nodes[0], 0).map(|f| f.unwrap().number).collect();
        assert_eq!(kept, [1, 5, NODE_OP_TYPE, NODE_DOMAIN]);
        let opset = Fields::new(&after, 0).map(Result::unwrap).find(|f| f.number == MODEL_OPSET_IMPORT).unwrap();
        let opset: Vec<(u64, Vec<u8>)> =
            Fields::new(opset.payload, 0).map(|f| f.unwrap()).map(|f| (f.number, f.raw.to_vec())).collect();
        assert_eq!(opset[0].1[2..], *b"ai.croco");
        assert_eq!(varint(&opset[1].1, 1).unwrap().0, 1);
    }

    #[test]
    fn a_missing_weight_input_is_named() {
        let error = weights_as_initializers(&model(&["x"]), &[WeightInput { name: "w", dims: &[2], data_type: 1 }]);
        assert!(matches!(error, Err(ProtoError::NoSuchInput(name)) if name == "w"));
    }

    #[test]
    fn truncated_bytes_are_an_error_not_a_panic() {
        let full = model(&["x", "w"]);
        for cut in 1..full.len() {
            let _ = weights_as_initializers(&full[..cut], &[WeightInput { name: "w", dims: &[2], data_type: 1 }]);
        }
        assert!(matches!(weights_as_initializers(&full[..full.len() - 1], &[]), Err(ProtoError::Malformed { .. })));
    }
}
