// Regenerates hf_golden.json: token ids and decoded text from Hugging Face `tokenizers` (the
// Rust library, through its official Node binding: `npm install tokenizers@0.23.2`), for the
// tokenizer.json files tokenizer_test.cc checks. Usage, from this folder:
//   NODE_PATH=/path/to/node_modules node gen_hf_golden.js $KVSWEEP_ASSETS > hf_golden.json
const { Tokenizer } = require('tokenizers');
const crypto = require('crypto');
const fs = require('fs');
const sha = (s) => crypto.createHash('sha256').update(s, 'utf8').digest('hex');
const assets = process.argv[2];
const files = {
  'mistral': assets + '/tokenizers/mistral/tokenizer.json',
  'ref-llama': assets + '/models/ref-llama/tokenizer.json',
  'ref-gpt2': assets + '/models/ref-gpt2/tokenizer.json',
  'synthetic_bytelevel': __dirname + '/synthetic_bytelevel.json',
  'synthetic_sp_unk': __dirname + '/synthetic_sp_unk.json',
};
const texts = [
  'Hello world, this is a test.', '', ' ', '  ', '   ', '\t', '\n', ' leading space',
  '  two leading spaces', 'trailing space ', 'multiple   spaces\tand\ttabs  here',
  '\n\nnewlines\n\n\nand\r\nCRLF\r\n', 'naïve café résumé', 'cafe\u0301 vs caf\u00e9!',
  'Ünïcödé — “quotes” … ‘single’', '日本語のテキスト', ' 日本', '中文测试，标点。', '한국어 텍스트',
  'emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷', 'Ελληνικά Привет, мир! עברית हिन्दी',
  '<s> literal </s> and <unk>', '<s>', '<s>hello', 'a<s>b', 'a <s> b', '</s></s>',
  '<|endoftext|>', 'x<|endoftext|>y <|endoftext|> z', '<|endoftext|><|im_start|>user',
  'a <mask> b', 'a<mask>b', '  <mask>  x', 'foo foobar barfoo foo.', 'Foo foo',
  '1234567890 3.14159 1,000,000', 'def f(x):\n    return x**2  # comment\n',
  "it's they're we've I'm you'll he'd IT'S Don'T", '\u180e mongolian a\u180eb', 'a\u0085b',
  'nbsp\u00a0here', 'zero\u200bwidth\u2028sep', '\u0001\u0002 control\u007f',
  'hello Hello hello_world', 'the them there', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  ' = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor .',
  '@-@ 1 @,@ 000 @.@ 5', 'Hxllo wqrld zzz', '\ud83d\ude00\ud83d\ude00',
];
(async () => {
  const out = {};
  const whole = {};
  for (const [name, path] of Object.entries(files)) {
    const t = Tokenizer.fromFile(path);
    const cases = [];
    for (const text of texts) {
      const e = await t.encode(text, null, { addSpecialTokens: false });
      const ids = Array.from(e.getIds());
      cases.push({ text, ids, decoded: await t.decode(ids, false) });
    }
    out[name] = cases;
    if (!path.startsWith(assets)) continue;
    // Whole files, in the format of tests/fixtures/tokenizer_ids.json (sha256 and count only).
    const lam = fs.readFileSync(assets + '/data/lambada_openai/lambada_test.jsonl', 'utf8');
    let lines = '';
    let n = 0;
    for (const l of lam.split('\n')) {
      if (!l) continue;
      const text = JSON.parse(l).text;
      const context = text.split(' ').slice(0, -1).join(' ');
      const a = await t.encode(context, null, { addSpecialTokens: false });
      const b = await t.encode(text, null, { addSpecialTokens: false });
      lines += a.getIds().join(',') + '|' + b.getIds().join(',') + '\n';
      ++n;
    }
    const wiki = fs.readFileSync(assets + '/data/wikitext-2/wiki.test.raw', 'utf8');
    const w = await t.encode(wiki, null, { addSpecialTokens: false });
    whole[name] = { lambada: { n_docs: n, sha256: sha(lines) },
                    wikitext: { count: w.getIds().length, sha256: sha(w.getIds().join(',')) } };
  }
  process.stdout.write(JSON.stringify({ generator: 'tokenizers (npm) 0.23.2', cases: out, whole_file: whole }, null, 0) + '\n');
})();
