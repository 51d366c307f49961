/** The CLI's public face beyond `atvp`: the job client and the report summary. */
export * from "./jobClient.js";
export * from "./summary.js";
