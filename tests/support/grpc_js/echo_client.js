// An independent gRPC client (@grpc/grpc-js, Node.js): one Echo.Say call over mTLS,
// with "authorization: Bearer <token>" when a token is given, and a W3C "traceparent" header
// when one is given. Prints one JSON line:
// {"code": <grpc status code>, "details": "...", "caller": "..."}.
//
// usage: node echo_client.js ADDRESS SERVER_NAME CA.pem CERT.pem KEY.pem PROTO TOKEN|- [TRACEPARENT]
"use strict";
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, serverName, caPath, certPath, keyPath, protoPath, token, traceparent] = process.argv.slice(2);
const definition = loader.loadSync(protoPath, { keepCase: true });
const demo = grpc.loadPackageDefinition(definition).meshnode.demo.v1;
const credentials = grpc.credentials.createSsl(
  fs.readFileSync(caPath), fs.readFileSync(keyPath), fs.readFileSync(certPath),
);
const client = new demo.Echo(address, credentials, { "grpc.ssl_target_name_override": serverName });
const metadata = new grpc.Metadata();
if (token && token !== "-") {
  metadata.add("authorization", `Bearer ${token}`);
}
if (traceparent) {
  metadata.add("traceparent", traceparent);
}
client.Say({ text: "from grpc-js" }, metadata, { deadline: Date.now() + 10000 }, (err, reply) => {
  const out = err ? { code: err.code, details: err.details } : { code: 0, details: "", caller: reply.caller };
  console.log(JSON.stringify(out));
  client.close();
});
