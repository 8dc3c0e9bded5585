// BERT uncased WordPiece, read from a HuggingFace tokenizer.json (BertNormalizer,
// BertPreTokenizer, WordPiece with "##", [CLS] … [SEP]). Written to give the same ids as
// the `tokenizers` library for the MiniLM models; tests/js/wordpiece.test.mjs checks it.

// Unicode classes as the Rust library sees them: "other" (Cc, Cf, Cs, Co, Cn) is dropped by
// clean_text; White_Space (not JS's \s, which adds U+FEFF) separates words.
const OTHER = /\p{C}/u;
const SPACE = /\p{White_Space}/u;
const MARK = /\p{Mn}/u;
// BERT splits on ASCII punctuation (which includes symbols like $ + < = > ^ ` | ~) and on
// every Unicode punctuation category.
const PUNCT = /[!-\/:-@\[-`{-~]|\p{P}/u;

// The CJK ideograph blocks that BERT isolates as single-character words.
function isChinese(cp) {
  return (cp >= 0x4e00 && cp <= 0x9fff) || (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) || (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) || (cp >= 0x2b920 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) || (cp >= 0x2f800 && cp <= 0x2fa1f);
}

export class WordPiece {
  /// `json`: the parsed tokenizer.json (or its text).
  constructor(json) {
    const t = typeof json === "string" ? JSON.parse(json) : json;
    if (t.model?.type !== "WordPiece") throw new Error(`not a WordPiece tokenizer: ${t.model?.type}`);
    const n = t.normalizer ?? {};
    this.lowercase = n.lowercase ?? true;
    // The library strips accents when lowercasing unless told otherwise.
    this.stripAccents = n.strip_accents ?? this.lowercase;
    this.cleanText = n.clean_text ?? true;
    this.chineseChars = n.handle_chinese_chars ?? true;
    this.vocab = new Map(Object.entries(t.model.vocab));
    this.prefix = t.model.continuing_subword_prefix ?? "##";
    this.maxWordChars = t.model.max_input_chars_per_word ?? 100;
    this.maxLength = t.truncation?.max_length ?? 512;
    const id = (tok) => {
      const v = this.vocab.get(tok);
      if (v === undefined) throw new Error(`${tok} missing from the vocabulary`);
      return v;
    };
    this.unk = id(t.model.unk_token ?? "[UNK]");
    this.cls = id("[CLS]");
    this.sep = id("[SEP]");
    this.pad = t.padding?.pad_id ?? 0;
    // Special tokens typed in the text stay whole (they are matched before normalizing).
    this.special = (t.added_tokens ?? []).filter((a) => a.special).map((a) => [a.content, a.id]);
  }

  /// The normalized text: clean, isolate CJK, strip accents, lowercase.
  normalize(text) {
    let out = "";
    for (const ch of text) {
      const cp = ch.codePointAt(0);
      if (this.cleanText) {
        if (cp === 0 || cp === 0xfffd || (OTHER.test(ch) && ch !== "\t" && ch !== "\n" && ch !== "\r")) continue;
        if (SPACE.test(ch)) { out += " "; continue; }
      }
      out += this.chineseChars && isChinese(cp) ? ` ${ch} ` : ch;
    }
    if (this.stripAccents) {
      let s = "";
      for (const ch of out.normalize("NFD")) if (!MARK.test(ch)) s += ch;
      out = s;
    }
    if (this.lowercase) {
      // Per character like the library: no final-sigma rule of String.toLowerCase.
      let s = "";
      for (const ch of out) s += ch.toLowerCase();
      out = s;
    }
    return out;
  }

  /// Words of normalized text: split on whitespace, each punctuation mark on its own.
  preTokenize(text) {
    const words = [];
    let cur = "";
    for (const ch of text) {
      if (SPACE.test(ch)) {
        if (cur) words.push(cur);
        cur = "";
      } else if (PUNCT.test(ch)) {
        if (cur) words.push(cur);
        words.push(ch);
        cur = "";
      } else cur += ch;
    }
    if (cur) words.push(cur);
    return words;
  }

  /// One word's pieces (greedy longest match first); the whole word is [UNK] if any part
  /// is not in the vocabulary.
  wordIds(word) {
    const chars = Array.from(word);
    if (chars.length > this.maxWordChars) return [this.unk];
    const ids = [];
    let start = 0;
    while (start < chars.length) {
      let end = chars.length;
      let found;
      while (end > start) {
        const sub = (start > 0 ? this.prefix : "") + chars.slice(start, end).join("");
        found = this.vocab.get(sub);
        if (found !== undefined) break;
        end--;
      }
      if (found === undefined) return [this.unk];
      ids.push(found);
      start = end;
    }
    return ids;
  }

  /// Token ids of one text with [CLS] and [SEP], truncated to the tokenizer's max length.
  encode(text) {
    const ids = [];
    for (const part of this.#splitSpecial(text)) {
      if (typeof part === "number") { ids.push(part); continue; }
      for (const w of this.preTokenize(this.normalize(part))) ids.push(...this.wordIds(w));
    }
    return [this.cls, ...ids.slice(0, Math.max(0, this.maxLength - 2)), this.sep];
  }

  /// A batch padded to its longest row: int64 `input_ids` and `attention_mask`, [B, S].
  encodeBatch(texts) {
    const rows = texts.map((t) => this.encode(t));
    const width = Math.max(...rows.map((r) => r.length));
    const ids = new BigInt64Array(rows.length * width).fill(BigInt(this.pad));
    const mask = new BigInt64Array(rows.length * width);
    rows.forEach((r, i) => r.forEach((id, j) => {
      ids[i * width + j] = BigInt(id);
      mask[i * width + j] = 1n;
    }));
    return { ids, mask, dims: [rows.length, width], rows };
  }

  // The text cut around special tokens typed verbatim ("[SEP]"): strings and ids.
  #splitSpecial(text) {
    let parts = [text];
    for (const [content, id] of this.special) {
      parts = parts.flatMap((p) => {
        if (typeof p !== "string" || !p.includes(content)) return [p];
        const out = [];
        p.split(content).forEach((s, i) => {
          if (i > 0) out.push(id);
          if (s) out.push(s);
        });
        return out;
      });
    }
    return parts;
  }
}
