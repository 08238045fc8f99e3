// Socket.IO on Node: the server a user would pick instead of this gateway, with the same chat
// semantics as the gateway's hot path, for the fan-out benchmark (bench/targets.py, "socketio-node").
//
//   BENCH_SECRET=... PORT=... node bench/peers/socketio_node.js   (socket.io from NODE_PATH)
//
// Connect verifies an HS256 JWT from the Socket.IO auth payload (as the gateway does at the
// upgrade); `join` enters a room and acks; `message` builds the same message object the gateway
// builds (id, senderType, senderId, createdAt), emits it to the room (sender included) and acks
// with {id, roomId, createdAt}. The same as bench/peers/socketio_app.py, in Node.
"use strict";

const crypto = require("node:crypto");
const http = require("node:http");
const { Server } = require("socket.io");

const SECRET = process.env.BENCH_SECRET;
const PORT = Number(process.env.PORT);

function b64url(buf) {
  return buf.toString("base64").replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_");
}

// HS256 only, exp required: what the bench's tokens are (no dependency beyond socket.io).
function verify(token) {
  const parts = String(token || "").split(".");
  if (parts.length !== 3) throw new Error("malformed");
  const [head, body, sig] = parts;
  const want = b64url(crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest());
  if (want.length !== sig.length || !crypto.timingSafeEqual(Buffer.from(want), Buffer.from(sig))) {
    throw new Error("bad signature");
  }
  const header = JSON.parse(Buffer.from(head, "base64url").toString());
  const claims = JSON.parse(Buffer.from(body, "base64url").toString());
  if (header.alg !== "HS256" || typeof claims.exp !== "number" || claims.exp < Date.now() / 1000) {
    throw new Error("expired or not HS256");
  }
  return claims;
}

const httpServer = http.createServer();
// BENCH_SOCKETIO_RECOVERY=1 (bench.storm): connection state recovery, the token checked again on a
// recovered connection too (skipMiddlewares false), as the other servers check it on every connection.
const recovery = process.env.BENCH_SOCKETIO_RECOVERY === "1"
  ? { connectionStateRecovery: { maxDisconnectionDuration: 600000, skipMiddlewares: false } }
  : {};
const io = new Server(httpServer, { transports: ["websocket"], serveClient: false, ...recovery });

io.use((socket, next) => {
  try {
    socket.data.user = verify(socket.handshake.auth && socket.handshake.auth.token).sub;
    next();
  } catch (err) {
    next(new Error("invalid token"));
  }
});

io.on("connection", (socket) => {
  socket.on("join", (data, ack) => {
    socket.join(data.roomId);
    if (typeof ack === "function") ack({ roomId: data.roomId, action: "joined" });
  });
  socket.on("message", (data, ack) => {
    const msg = {
      id: crypto.randomUUID(),
      roomId: data.roomId,
      senderType: "human",
      senderId: socket.data.user,
      content: data.content,
      attachments: [],
      createdAt: new Date().toISOString(),
    };
    io.to(data.roomId).emit("message", msg);
    if (typeof ack === "function") ack({ id: msg.id, roomId: msg.roomId, createdAt: msg.createdAt });
  });
});

httpServer.listen(PORT, "127.0.0.1");
