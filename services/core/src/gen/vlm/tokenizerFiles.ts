/**
 * A small byte-level BPE tokenizer in the Hugging Face `tokenizers` format (tokenizer.json) and
 * its tokenizer_config.json, with each family's special tokens and real chat template: every
 * byte is a token (no merges), so any text encodes and the vocabulary stays tiny.
 */
export type VlmFamily = "qwen2_5_vl" | "llava";

export interface SpecialToken { id: number; content: string }

export interface TokenizerSpec {
  family: VlmFamily;
  /** id of the first byte token */
  byteBase: number;
  specials: SpecialToken[];
  /** ids past the last one, rounded up: the decoder's vocabulary size */
  vocabSize: number;
  imageTokenId: number;
  bosTokenId: number | null;
  eosTokenId: number;
  padTokenId: number;
  /** Qwen only */
  visionStartId?: number;
  visionEndId?: number;
  videoTokenId?: number;
}

export const QWEN_TOKENS: TokenizerSpec = {
  family: "qwen2_5_vl",
  byteBase: 0,
  specials: [
    { id: 256, content: "<|endoftext|>" },
    { id: 257, content: "<|im_start|>" },
    { id: 258, content: "<|im_end|>" },
    { id: 259, content: "<|vision_start|>" },
    { id: 260, content: "<|vision_end|>" },
    { id: 261, content: "<|vision_pad|>" },
    { id: 262, content: "<|image_pad|>" },
    { id: 263, content: "<|video_pad|>" },
  ],
  vocabSize: 272,
  imageTokenId: 262,
  bosTokenId: null,
  eosTokenId: 258,
  padTokenId: 256,
  visionStartId: 259,
  visionEndId: 260,
  videoTokenId: 263,
};

export const LLAVA_TOKENS: TokenizerSpec = {
  family: "llava",
  byteBase: 3,
  specials: [
    { id: 0, content: "<unk>" },
    { id: 1, content: "<s>" },
    { id: 2, content: "</s>" },
    { id: 259, content: "<image>" },
    { id: 260, content: "<pad>" },
  ],
  vocabSize: 272,
  imageTokenId: 259,
  bosTokenId: 1,
  eosTokenId: 2,
  padTokenId: 260,
};

/** Qwen2.5-VL's chat template, as shipped with Qwen/Qwen2.5-VL-*-Instruct. */
export const QWEN_CHAT_TEMPLATE =
  "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/** llava-hf/llava-1.5's chat template (without the {% generation %} markers only training uses). */
export const LLAVA_CHAT_TEMPLATE =
  "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}";

/** GPT-2's byte-to-unicode table: printable characters stand for every byte. */
export function byteLevelAlphabet(): string[] {
  const bs: number[] = [];
  for (let c = 0x21; c <= 0x7e; c++) bs.push(c);
  for (let c = 0xa1; c <= 0xac; c++) bs.push(c);
  for (let c = 0xae; c <= 0xff; c++) bs.push(c);
  const chars = new Array<string>(256);
  for (const b of bs) chars[b] = String.fromCodePoint(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (chars[b] === undefined) chars[b] = String.fromCodePoint(256 + n++);
  return chars;
}

export function tokenizerJson(spec: TokenizerSpec): object {
  const vocab: Record<string, number> = {};
  byteLevelAlphabet().forEach((ch, b) => { vocab[ch] = spec.byteBase + b; });
  for (const s of spec.specials) vocab[s.content] = s.id;
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: spec.specials.map((s) => ({ id: s.id, content: s.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
    normalizer: spec.family === "qwen2_5_vl" ? { type: "NFC" } : null,
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: { type: "ByteLevel", add_prefix_space: false, trim_offsets: false, use_regex: false },
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "", end_of_word_suffix: "",
      fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges: [],
    },
  };
}

export function tokenizerConfigJson(spec: TokenizerSpec): object {
  const name = (id: number | null) => (id === null ? null : spec.specials.find((s) => s.id === id)!.content);
  const added: Record<string, object> = {};
  for (const s of spec.specials) added[String(s.id)] = { content: s.content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true };
  const common = {
    added_tokens_decoder: added,
    bos_token: name(spec.bosTokenId),
    eos_token: name(spec.eosTokenId),
    pad_token: name(spec.padTokenId),
    clean_up_tokenization_spaces: false,
    model_max_length: 32768,
  };
  if (spec.family === "qwen2_5_vl") {
    return { add_bos_token: false, add_prefix_space: false, ...common, errors: "replace", split_special_tokens: false, tokenizer_class: "Qwen2Tokenizer", unk_token: null, chat_template: QWEN_CHAT_TEMPLATE, processor_class: "Qwen2_5_VLProcessor" };
  }
  return { add_bos_token: false, add_eos_token: false, ...common, unk_token: "<unk>", tokenizer_class: "PreTrainedTokenizerFast", chat_template: LLAVA_CHAT_TEMPLATE, processor_class: "LlavaProcessor" };
}
