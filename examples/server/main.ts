// Starts the example server: bun examples/server/main.ts --model <file.safetensors> [options]
// (the server itself is server.ts; this file only reads the command line).
import * as fi from "../../lib/index.ts";
import { LlamaModel } from "../llama/model.ts";
import { hfTokenizer, startServer } from "./server.ts";

const args = process.argv.slice(2);
const arg = (name: string, fallback: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] ? args[i + 1]! : fallback;
};
const modelPath = arg("model", "");
if (!modelPath) {
  console.log("usage: bun examples/server/main.ts --model <file.safetensors> [--tokenizer <dir with tokenizer.json>] [--port 8000] [--device cpu|cuda:0] [--pages 512] [--page-size 16]");
  process.exit(2);
}
const model = LlamaModel.load(modelPath, { device: arg("device", fi.defaultDevice()) as fi.Device });
const tokenizerDir = arg("tokenizer", "");
const s = startServer({ model, port: Number(arg("port", "8000")), numPages: Number(arg("pages", "512")), pageSize: Number(arg("page-size", "16")),
  tokenizer: tokenizerDir ? hfTokenizer(tokenizerDir) : undefined });
console.log(`serving ${modelPath} on ${s.url} (${model.device})`);
