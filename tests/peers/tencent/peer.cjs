// Drives the official Tencent mini-program SDK (npm qcloud-iotexplorer-appdev-sdk 3.0.115) against
// the cloud2mqtt emulator's WebSocket, for tests/test_tencent_peer.py.
//
// argv[2] = JSON {wsUrl, token, appKey, deviceIds}. The SDK's login needs wx.request or
// XMLHttpRequest (mini-program/browser only), so the token comes from the test (it logs in to the
// emulator with our signer) and is set on the SDK's LoginManager as its own login would.
// Everything on the socket is the SDK's own code: IotWebsocket.connect() sends ActivePush and the
// first AppDeviceTraceHeartBeat, decodes pushes (js-base64, NULs stripped, JSON.parse) and
// AppDevSdk._handlePushEvent turns them into wsReport/wsControl/wsEventReport/wsStatusChange/
// wsActionPush/wsActionReport events. Each is printed as one JSON line.

'use strict';

// The SDK's browser path opens `new window.WebSocket(url)`; Node >= 22 (or 20 with
// --experimental-websocket) has a standard global WebSocket.
globalThis.window = { WebSocket: globalThis.WebSocket };

const { AppDevSdk } = require('qcloud-iotexplorer-appdev-sdk');

const arg = JSON.parse(process.argv[2]);
const out = (event, data) => process.stdout.write(JSON.stringify({ event, data }) + '\n');

async function main() {
  if (typeof globalThis.WebSocket !== 'function') {
    out('fatal', 'no global WebSocket in this Node');
    process.exit(3);
  }
  const sdk = new AppDevSdk({
    appKey: arg.appKey,
    getAccessToken: async () => ({ Token: arg.token }),
    wsConfig: { url: arg.wsUrl, autoReconnect: false, connectWhenInit: false },
  });
  const lm = sdk.loginManager;
  lm.accessToken = arg.token;
  lm.userInfo = { UserID: 'peer-user', NickName: 'peer' };
  lm.isLogin = true;

  for (const name of ['wsReport', 'wsControl', 'wsEventReport', 'wsStatusChange', 'wsActionPush', 'wsActionReport']) {
    sdk.on(name, (data) => out(name, data));
  }
  sdk.on('wsClose', (data) => out('wsClose', data));
  sdk.on('wsError', () => out('wsError', null));
  // Raw frames the SDK could not parse are logged by it and dropped; count what reached it.
  sdk.ws.on('message', () => {});

  await sdk.subscribeDevices(arg.deviceIds); // connect + ActivePush + first heartbeat (not awaited by the SDK)
  // Replies as the SDK's own request/response matching (by reqId) resolves them:
  const active = await sdk.ws.send('ActivePush', { DeviceIds: arg.deviceIds, AccessToken: arg.token, AppKey: arg.appKey });
  out('activePushResult', active === undefined ? null : active);
  const beat = await sdk.ws.sendWsHeatBeat();
  out('heartbeatResult', beat === undefined ? null : beat);
  out('ready', null);

  // Stay until the test closes stdin (or a safety timeout).
  const timer = setTimeout(() => { out('timeout', null); process.exit(0); }, arg.timeoutMs || 20000);
  process.stdin.on('end', () => { clearTimeout(timer); sdk.ws.disconnect(); process.exit(0); });
  process.stdin.resume();
}

main().catch((err) => {
  out('fatal', String(err && err.stack || err));
  process.exit(2);
});
