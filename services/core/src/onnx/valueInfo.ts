/** A typed ValueInfoProto (graph input/output): element type and, when known, the dims. */
import { create } from "@bufbuild/protobuf";
import {
  TensorShapeProtoSchema, TensorShapeProto_DimensionSchema, TypeProtoSchema, TypeProto_TensorSchema, ValueInfoProtoSchema,
  type ValueInfoProto,
} from "../../../gen/onnx_pb.js";

/** A fixed size, or a symbolic one such as "batch_size". */
export type Dim = number | string;

/** `dims` undefined leaves the shape unknown (onnxruntime infers it). */
export function valueInfo(name: string, elemType: number, dims: readonly Dim[] | undefined): ValueInfoProto {
  return create(ValueInfoProtoSchema, {
    name,
    type: create(TypeProtoSchema, {
      value: {
        case: "tensorType",
        value: create(TypeProto_TensorSchema, {
          elemType,
          shape: dims === undefined ? undefined : create(TensorShapeProtoSchema, {
            dim: dims.map((d) => create(TensorShapeProto_DimensionSchema, {
              value: typeof d === "number" ? { case: "dimValue", value: BigInt(d) } : { case: "dimParam", value: d },
            })),
          }),
        }),
      },
    }),
  });
}
