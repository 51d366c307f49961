/**
 * The two input formats of `atvp calib`, read into chat samples: `--prompts` JSONL lines
 * `{"image"?, "prompt", "response"?}` and `--conversations` LLaVA/ShareGPT4V JSON
 * (`human` = user, `gpt` = assistant, `<image>\n` in the text becomes the image part). The
 * image part comes first in its turn, as the reference code builds it.
 */
import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { CalibrationError } from "../../errors.js";

export type ContentPart = { type: "image" } | { type: "text"; text: string };
export interface ChatMessage { role: "user" | "assistant" | "system"; content: ContentPart[] }

export interface ChatSample {
  /** "file:line" (JSONL) or "file: entry i (id X)" (JSON), for error messages */
  where: string;
  messages: ChatMessage[];
  /** absolute image paths, in the order of the image parts */
  images: string[];
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw new CalibrationError(path, `cannot read the input file (${(err as Error).message})`, { cause: err });
  }
}

function imagePath(file: string, image: string, imageRoot: string | undefined): string {
  return isAbsolute(image) ? image : resolve(imageRoot ?? dirname(file), image);
}

export function readPrompts(file: string, imageRoot?: string): ChatSample[] {
  const samples: ChatSample[] = [];
  readText(file).split("\n").forEach((raw, i) => {
    if (raw.trim() === "") return;
    const where = `${file}:${i + 1}`;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(raw) as Record<string, unknown>;
    } catch (err) {
      throw new CalibrationError(where, `not valid JSON (${(err as Error).message})`);
    }
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new CalibrationError(where, "each line must be a JSON object {\"image\", \"prompt\", \"response\"}");
    if (typeof v["prompt"] !== "string") throw new CalibrationError(where, "\"prompt\" (a string) is required");
    if (v["response"] !== undefined && typeof v["response"] !== "string") throw new CalibrationError(where, "\"response\" must be a string");
    if (v["image"] !== undefined && (typeof v["image"] !== "string" || v["image"] === "")) throw new CalibrationError(where, "\"image\" must be a path");
    const images = typeof v["image"] === "string" ? [imagePath(file, v["image"], imageRoot)] : [];
    const user: ContentPart[] = [...images.map(() => ({ type: "image" as const })), { type: "text", text: v["prompt"] }];
    const messages: ChatMessage[] = [{ role: "user", content: user }];
    if (typeof v["response"] === "string") messages.push({ role: "assistant", content: [{ type: "text", text: v["response"] }] });
    samples.push({ where, messages, images });
  });
  if (samples.length === 0) throw new CalibrationError(file, "the prompts file has no samples");
  return samples;
}

const IMAGE_MARKER = /<image>\n?/g;

export function readConversations(file: string, imageRoot?: string): ChatSample[] {
  let data: unknown;
  try {
    data = JSON.parse(readText(file));
  } catch (err) {
    if (err instanceof CalibrationError) throw err;
    throw new CalibrationError(file, `not valid JSON (${(err as Error).message})`);
  }
  if (!Array.isArray(data)) throw new CalibrationError(file, "expected a JSON array of {\"id\", \"image\", \"conversations\"} (LLaVA / ShareGPT4V format)");
  if (data.length === 0) throw new CalibrationError(file, "the conversations file has no samples");
  return data.map((entry, i) => {
    const e = entry as Record<string, unknown>;
    const where = `${file}: entry ${i}${typeof e?.["id"] === "string" || typeof e?.["id"] === "number" ? ` (id ${String(e["id"])})` : ""}`;
    if (typeof e !== "object" || e === null || !Array.isArray(e["conversations"])) throw new CalibrationError(where, "needs a \"conversations\" array");
    const rawImages = e["image"] === undefined ? [] : Array.isArray(e["image"]) ? e["image"] : [e["image"]];
    if (!rawImages.every((x) => typeof x === "string" && x !== "")) throw new CalibrationError(where, "\"image\" must be a path or a list of paths");
    const images = (rawImages as string[]).map((x) => imagePath(file, x, imageRoot));
    let markers = 0;
    const messages = (e["conversations"] as unknown[]).map((turn, k): ChatMessage => {
      const t = turn as Record<string, unknown>;
      if (typeof t?.["value"] !== "string") throw new CalibrationError(where, `turn ${k} needs a string "value"`);
      const role = t["from"] === "human" ? "user" : t["from"] === "gpt" ? "assistant" : t["from"] === "system" ? "system" : undefined;
      if (!role) throw new CalibrationError(where, `turn ${k}: "from" must be human, gpt or system, got ${JSON.stringify(t["from"])}`);
      const count = (t["value"].match(IMAGE_MARKER) ?? []).length;
      markers += count;
      const text = t["value"].replace(IMAGE_MARKER, "").trim();
      return { role, content: [...Array.from({ length: count }, () => ({ type: "image" as const })), { type: "text", text }] };
    });
    if (markers !== images.length) {
      throw new CalibrationError(where, `${markers} <image> marker${markers === 1 ? "" : "s"} for ${images.length} image${images.length === 1 ? "" : "s"}: each image needs exactly one <image> in the conversation`);
    }
    return { where, messages, images };
  });
}
