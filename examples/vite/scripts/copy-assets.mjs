// Copies the model and its test rows from the repo into public/ (served at the app's
// base and copied into dist/ by Vite). Run by `npm run dev` / `npm run build`.
import fs from "node:fs";

const from = new URL("../../../models/", import.meta.url);
const to = new URL("../public/", import.meta.url);
fs.mkdirSync(to, { recursive: true });
for (const f of ["digits_mlp.onnx", "digits_test.npy"]) fs.copyFileSync(new URL(f, from), new URL(f, to));
