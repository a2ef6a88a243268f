// Runs the seed's browser example (browser_example.js, byte for byte as in the design note) in Node 20.
// The page's world is supplied around it: `fetch` resolves the seed's route to sse-relay's POST endpoint,
// `setText` is the React state setter, and `console` is recorded. Prints what the page would show.
import { readFile } from "node:fs/promises";

const base = process.argv[2];
const code = await readFile(new URL("./browser_example.js", import.meta.url), "utf8");
let text = "";
const logs = [];
const setText = (update) => { text = typeof update === "function" ? update(text) : update; };
const pageFetch = (url, options) =>
  fetch(new URL(url === "/api/my-endpoint" ? "/v1/generations" : url, base), options);
const pageConsole = {
  log: (...args) => logs.push(["log", args.join(" ")]),
  error: (...args) => logs.push(["error", args.join(" ")]),
};
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
await new AsyncFunction("fetch", "setText", "console", code)(pageFetch, setText, pageConsole);
process.stdout.write(JSON.stringify({ text, logs }));
