// The official CoolKit client (npm ewelink-api-next) driven by tests/test_coolkit_peer.py.
//
//   node peer.mjs sign    '{"appId":…,"appSecret":…}'
//       → {"url": <createLoginUrl output>}: the library signs `${appId}_${seq}` with its own
//         HMAC; the test recomputes it with protocols.coolkit.sign.
//   node peer.mjs session '{"baseUrl":"http://127.0.0.1:P/eu","appId","appSecret","account","password","areaCode","deviceId"}'
//       → logs in with client.user.login (the emulator verifies the signature over the bytes it
//         received), refreshes the token, asks dispatch via Connect.getDispatch, opens the socket
//         with Connect.create (its userOnline handshake), sends one updateState and prints every
//         step as one JSON line.
//
// The emulator speaks plain ws:// (no TLS), so the wss:// URL that getDispatch builds is
// downgraded to ws:// here; everything else is the library's own code path.
import eWeLink from "ewelink-api-next";

const [mode, arg] = process.argv.slice(2);
const opts = JSON.parse(arg || "{}");
const out = (obj) => console.log(JSON.stringify(obj));

if (mode === "sign") {
  const client = new eWeLink.WebAPI({ appId: opts.appId, appSecret: opts.appSecret, region: "eu" });
  out({ url: client.oauth.createLoginUrl({ redirectUrl: "https://example.invalid/cb", state: "s" }) });
  process.exit(0);
}

if (mode === "session") {
  const timer = setTimeout(() => { out({ step: "timeout" }); process.exit(2); }, 20000);
  const client = new eWeLink.WebAPI({ appId: opts.appId, appSecret: opts.appSecret, region: "eu" });
  client.request.defaults.baseURL = opts.baseUrl;
  const login = await client.user.login({ account: opts.account, password: opts.password, areaCode: opts.areaCode });
  out({ step: "login", error: login.error, msg: login.msg, hasAt: Boolean(login.data?.at), apikey: client.userApiKey });
  if (login.error !== 0) process.exit(1);
  // refreshToken() resets client.userApiKey from data.user, which a v2 refresh reply does not
  // carry (seed 001: only at and rt), so keep the apikey from the login.
  const apikey = client.userApiKey;
  await new Promise((r) => setTimeout(r, 100));
  const refreshed = await client.user.refreshToken({ rt: client.rt });
  out({ step: "refresh", error: refreshed.error, msg: refreshed.msg, rotated: refreshed.data?.rt !== undefined && refreshed.data.rt !== login.data.rt });
  const at = refreshed.data?.at || client.at;

  const wsClient = new eWeLink.Ws({ appId: opts.appId, appSecret: opts.appSecret, region: "eu" });
  const wssUrl = await wsClient.Connect.getDispatch({ fullUrl: `${opts.baseUrl}/dispatch/app` });
  out({ step: "dispatch", url: wssUrl });
  const url = wssUrl.replace(/^wss:\/\//, "ws://");
  let answered = false;
  await wsClient.Connect.create(
    { fullUrl: url, at, userApiKey: apikey, appId: opts.appId },
    () => out({ step: "open" }),
    () => { out({ step: "close" }); },
    (err) => { out({ step: "error", message: String(err?.message || err) }); process.exit(1); },
    (ws, message) => {
      const text = message.data.toString();
      if (text === "pong") return;
      const doc = JSON.parse(text);
      if (doc.config) {
        out({ step: "handshake", error: doc.error, config: doc.config, sequence: doc.sequence });
        wsClient.Connect.updateState(opts.deviceId, { switch: "on" }, "update", "app", apikey);
        return;
      }
      if (doc.action === undefined && doc.sequence && !answered) {
        answered = true;
        out({ step: "reply", error: doc.error, deviceid: doc.deviceid });
        clearTimeout(timer);
        ws.close();
        setTimeout(() => process.exit(0), 50);
      }
    },
  );
} else if (mode !== "sign") {
  out({ error: `unknown mode ${mode}` });
  process.exit(64);
}
