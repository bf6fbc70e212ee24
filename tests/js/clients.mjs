// Real JavaScript clients against the proxy: openai-node and the Vercel AI SDK.
//
// Run by tests/e2e/test_js_clients.py as `node clients.mjs '<json config>'`; prints one JSON
// object: for every scenario either {text, usage, finishReason, ...} or {error: {...}}. The
// pytest side compares the proxy's answers with what the same client gets from the
// simulator's plaintext path and asserts the refusals.
//
// Config: {proxyUrl, simUrl, simKey, e2eeModel, plainModel, prompt, origin}.

import OpenAI from "openai";
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const config = JSON.parse(process.argv[2]);
const { proxyUrl, simUrl, simKey, e2eeModel, plainModel, prompt, origin } = config;

const endpoints = {
  proxy: { baseURL: `${proxyUrl}/v1`, apiKey: "local", model: e2eeModel },
  plain: { baseURL: `${simUrl}/api/v1`, apiKey: simKey, model: plainModel },
};

function describeError(error) {
  return {
    name: error?.name ?? null,
    status: error?.status ?? error?.statusCode ?? null,
    code: error?.code ?? error?.error?.code ?? parseBody(error?.responseBody)?.error?.code ?? null,
    param: error?.param ?? error?.error?.param ?? parseBody(error?.responseBody)?.error?.param ?? null,
    message: String(error?.message ?? error).slice(0, 500),
  };
}

function parseBody(text) {
  try {
    return typeof text === "string" ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

async function scenario(run) {
  try {
    return await run();
  } catch (error) {
    return { error: describeError(error) };
  }
}

// -- openai-node ------------------------------------------------------------------------------

function nodeClient(endpoint) {
  return new OpenAI({ baseURL: endpoint.baseURL, apiKey: endpoint.apiKey, maxRetries: 0 });
}

async function nodeChat(endpoint) {
  const completion = await nodeClient(endpoint).chat.completions.create({
    model: endpoint.model,
    messages: [{ role: "user", content: prompt }],
  });
  return {
    text: completion.choices[0].message.content,
    usage: {
      input: completion.usage.prompt_tokens,
      output: completion.usage.completion_tokens,
    },
    finishReason: completion.choices[0].finish_reason,
  };
}

async function nodeChatStream(endpoint) {
  const stream = await nodeClient(endpoint).chat.completions.create({
    model: endpoint.model,
    messages: [{ role: "user", content: prompt }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let usage = null;
  let finishReason = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks += 1;
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finishReason = chunk.choices[0].finish_reason ?? finishReason;
    }
    if (chunk.usage) {
      usage = { input: chunk.usage.prompt_tokens, output: chunk.usage.completion_tokens };
    }
  }
  return { text, usage, finishReason, chunks };
}

async function nodeResponses() {
  const client = nodeClient(endpoints.proxy);
  const response = await client.responses.create({ model: e2eeModel, input: prompt });
  const stream = await client.responses.create({ model: e2eeModel, input: prompt, stream: true });
  const types = [];
  const sequence = [];
  let text = "";
  let final = null;
  for await (const event of stream) {
    types.push(event.type);
    sequence.push(event.sequence_number);
    if (event.type === "response.output_text.delta") text += event.delta;
    if (event.type === "response.completed") final = event.response;
  }
  return {
    text: response.output_text,
    usage: { input: response.usage.input_tokens, output: response.usage.output_tokens },
    finishReason: response.status,
    streamed: {
      text,
      types,
      sequence,
      usage: { input: final.usage.input_tokens, output: final.usage.output_tokens },
    },
  };
}

// -- Vercel AI SDK ----------------------------------------------------------------------------

function provider(endpoint) {
  return createOpenAI({ baseURL: endpoint.baseURL, apiKey: endpoint.apiKey });
}

function aiUsage(usage) {
  return { input: usage.inputTokens ?? null, output: usage.outputTokens ?? null };
}

async function aiGenerate(model) {
  const result = await generateText({ model, prompt, maxRetries: 0 });
  return { text: result.text, usage: aiUsage(result.usage), finishReason: result.finishReason };
}

async function aiStream(model) {
  const result = streamText({ model, prompt, maxRetries: 0 });
  let text = "";
  const errors = [];
  for await (const part of result.fullStream) {
    if (part.type === "text-delta") text += part.text;
    if (part.type === "error") errors.push(describeError(part.error));
  }
  if (errors.length) return { error: errors[0] };
  return { text, usage: aiUsage(await result.usage), finishReason: await result.finishReason };
}

const weather = tool({
  description: `The weather in a city ${prompt}`,
  inputSchema: z.object({ city: z.string().describe(`a city ${prompt}`) }),
  execute: async ({ city }) => ({ city, forecast: "sunny" }),
});

async function aiTools(model, providerOptions) {
  const result = await generateText({
    model,
    prompt: `What is the weather in Oslo? ${prompt}`,
    tools: { weather },
    stopWhen: stepCountIs(3),
    maxRetries: 0,
    providerOptions,
  });
  return {
    text: result.text,
    steps: result.steps.length,
    toolCalls: result.steps.flatMap((step) => step.toolCalls.map((call) => call.toolName)),
    finishReason: result.finishReason,
  };
}

async function aiObject(model) {
  const result = await generateObject({
    model,
    schema: z.object({ city: z.string(), country: z.string() }),
    prompt: `Name a city. ${prompt}`,
    maxRetries: 0,
  });
  return { object: result.object, finishReason: result.finishReason };
}

// -- CORS: the preflight a browser sends for openai-node's own request headers ----------------

async function capturedHeaders(makeRequest) {
  let captured = null;
  const fetch = async (_url, init) => {
    captured = new Headers(init.headers);
    throw new Error("captured");
  };
  await makeRequest(fetch).catch(() => undefined);
  return captured;
}

// Headers a browser leaves out of Access-Control-Request-Headers (CORS-safelisted or set by the
// browser itself).
const NOT_PREFLIGHTED = new Set(["accept", "accept-language", "content-length", "user-agent"]);

async function corsPreflight(name, makeRequest) {
  const headers = await capturedHeaders(makeRequest);
  const requested = [...headers.keys()]
    .map((key) => key.toLowerCase())
    .filter((key) => !NOT_PREFLIGHTED.has(key))
    .sort();
  const preflight = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: "OPTIONS",
    headers: {
      origin,
      "access-control-request-method": "POST",
      "access-control-request-headers": requested.join(","),
    },
  });
  const allowed = (preflight.headers.get("access-control-allow-headers") ?? "")
    .split(",")
    .map((value) => value.trim().toLowerCase())
    .filter(Boolean);
  const actual = await fetch(`${proxyUrl}/v1/chat/completions`, {
    method: "POST",
    headers: { ...Object.fromEntries(headers.entries()), origin },
    body: JSON.stringify({ model: e2eeModel, messages: [{ role: "user", content: prompt }] }),
  });
  return {
    client: name,
    requested,
    status: preflight.status,
    allowOrigin: preflight.headers.get("access-control-allow-origin"),
    allowed,
    requestId: preflight.headers.get("x-request-id"),
    actualStatus: actual.status,
    actualAllowOrigin: actual.headers.get("access-control-allow-origin"),
    exposed: actual.headers.get("access-control-expose-headers"),
  };
}

// -- run ----------------------------------------------------------------------------------------

const results = {};
for (const [name, endpoint] of Object.entries(endpoints)) {
  results[`node_chat_${name}`] = await scenario(() => nodeChat(endpoint));
  results[`node_chat_stream_${name}`] = await scenario(() => nodeChatStream(endpoint));
  const chat = provider(endpoint).chat(endpoint.model);
  results[`ai_chat_generate_${name}`] = await scenario(() => aiGenerate(chat));
  results[`ai_chat_stream_${name}`] = await scenario(() => aiStream(chat));
}
results.node_responses = await scenario(nodeResponses);
const responsesModel = provider(endpoints.proxy)(e2eeModel); // the default: the Responses API
results.ai_responses_generate = await scenario(() => aiGenerate(responsesModel));
results.ai_responses_stream = await scenario(() => aiStream(responsesModel));
results.ai_responses_tools = await scenario(() =>
  aiTools(responsesModel, { openai: { store: false } }),
);
results.ai_chat_tools = await scenario(() =>
  aiTools(provider(endpoints.proxy).chat(e2eeModel), undefined),
);
results.ai_responses_object = await scenario(() => aiObject(responsesModel));
results.ai_chat_object = await scenario(() => aiObject(provider(endpoints.proxy).chat(e2eeModel)));
results.cors_openai_node = await scenario(() =>
  corsPreflight("openai-node", (fetch) =>
    new OpenAI({
      baseURL: `${proxyUrl}/v1`,
      apiKey: "local",
      maxRetries: 0,
      fetch,
      dangerouslyAllowBrowser: true,
    }).chat.completions.create({ model: e2eeModel, messages: [{ role: "user", content: "x" }] }),
  ),
);
results.cors_ai_sdk = await scenario(() =>
  corsPreflight("ai-sdk", (fetch) =>
    generateText({
      model: createOpenAI({ baseURL: `${proxyUrl}/v1`, apiKey: "local", fetch })(e2eeModel),
      prompt: "x",
      maxRetries: 0,
    }),
  ),
);
results.node = process.version;
process.stdout.write(JSON.stringify(results) + "\n");
