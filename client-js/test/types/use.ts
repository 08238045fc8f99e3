// Compiled (never run) by `npm test`: what a strict TypeScript application writes must type-check
// against the published declarations (dist/*.d.ts), and misuse must not.
import {
  GatewayClient,
  RequestError,
  type Ack,
  type ClientOptions,
  type Message,
  type RoomUpdate,
} from "../../dist/index.js";

declare const maybeTimeout: number | undefined;
declare const maybeKey: string | undefined;

// The browser's own WebSocket class fits the option.
const client = new GatewayClient("wss://chat.example.com/ws", { getToken: async () => "t", WebSocket });
const fixed = new GatewayClient("ws://127.0.0.1:3000/ws", { token: "t", timeoutMs: maybeTimeout });
const streamed = new GatewayClient("ws://127.0.0.1:3000/ws", { token: "t", transports: ["sse"], openTimeoutMs: 3000 });
streamed.on("connected", (c) => (c.transport === "sse" ? c.rooms : []));
const carried: "websocket" | "sse" = streamed.transport;

client.on("message", (m: Message) => m.content.toUpperCase());
client.on("recovery", (r) => (r.recovered ? undefined : r.offset));
client.on("disconnected", (d) => d.action === "give_up" && d.code);
const off = client.on("presence_count", (p) => p.count + 1);
off();

async function use(): Promise<void> {
  await client.connect();
  const joined: RoomUpdate = await client.join("general", { timeoutMs: maybeTimeout });
  const ack: Ack = await client.send("general", "hi", { dedupeKey: maybeKey, timeoutMs: maybeTimeout });
  const page = await client.presenceQuery("general", undefined, { timeoutMs: 5000 });
  const history = await client.history("general", 10);
  console.log(joined.offset, ack.id, page.next, history.entries.length, client.position("general")?.epoch);
  try {
    await client.send("general", "");
  } catch (err) {
    if (err instanceof RequestError) console.log(err.code, err.details);
  }
  fixed.close();
}
void use;

// @ts-expect-error: a token source is required
const none: ClientOptions = {};
// @ts-expect-error: not both
const both: ClientOptions = { token: "t", getToken: () => "t" };
// @ts-expect-error: presence `offline` is the server's to say
client.setPresence("general", "offline");
// @ts-expect-error: only the gateway's two transports
const carrier: ClientOptions = { token: "t", transports: ["long-polling"] };
void none;
void both;
void carrier;
void carried;
