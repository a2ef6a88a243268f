// The core flow with the official openai Node SDK against the relay; prints one JSON object for the Python test.
// Usage: node flow.mjs <baseURL> <apiKey> <text>
import OpenAI from "openai";

const [baseURL, apiKey, text] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 30_000 });
const result = {};

// Chat Completions, streamed, usage in the last chunk.
const chat = await client.chat.completions.create({
  model: "demo@chunk=3,delay_ms=5",
  messages: [{ role: "user", content: `echo:${text}` }],
  stream: true,
  stream_options: { include_usage: true },
});
let chatText = "";
let usage = null;
for await (const chunk of chat) {
  chatText += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
result.chat = { text: chatText, completionTokens: usage?.completion_tokens ?? null };

// A provider failure mid-stream is thrown by the SDK.
try {
  const cut = await client.chat.completions.create({
    model: "cut@after=2",
    messages: [{ role: "user", content: "echo:0123456789abcdef" }],
    stream: true,
  });
  for await (const _ of cut) {
    // read until the error
  }
  result.midStreamError = null;
} catch (error) {
  result.midStreamError = error?.code ?? error?.error?.code ?? String(error);
}

// Responses, background: stream, drop after three deltas, resume with starting_after.
const created = await client.responses.create({
  model: "demo@chunk=3,delay_ms=20",
  input: `echo:${text}`,
  background: true,
});
const numbers = [];
let responseText = "";
let deltas = 0;
const first = await client.responses.retrieve(created.id, { stream: true });
for await (const event of first) {
  numbers.push(event.sequence_number);
  if (event.type === "response.output_text.delta") {
    responseText += event.delta;
    if (++deltas === 3) break; // leaving the loop aborts the request: the connection drops
  }
}
const rest = await client.responses.retrieve(created.id, { stream: true, starting_after: numbers.at(-1) });
let last = null;
for await (const event of rest) {
  numbers.push(event.sequence_number);
  if (event.type === "response.output_text.delta") responseText += event.delta;
  last = event;
}
const retrieved = await client.responses.retrieve(created.id);
result.responses = { text: responseText, numbers, lastType: last?.type, retrievedText: retrieved.output_text };

// Cancel twice.
const slow = await client.responses.create({ model: "demo@chunk=1,delay_ms=50", input: `echo:${text}`, background: true });
const cancelled = await client.responses.cancel(slow.id);
const again = await client.responses.cancel(slow.id);
result.cancel = [cancelled.status, again.status];

console.log(JSON.stringify(result));
