// Connects MQTT.js (the browser bundle's global `mqtt`) to the `ws` URL of the query string,
// subscribes to `topic` at QoS 1, sets #status to "subscribed" once the SUBACK grants it (or
// "error: ..."), and appends the text of each message received as an <li> of #messages.
(function () {
  'use strict';
  const status = document.getElementById('status');
  const list = document.getElementById('messages');
  const setStatus = (text) => {
    status.textContent = text;
    console.log(`status: ${text}`);
  };
  const fail = (what) => {
    if (!status.textContent.startsWith('error')) setStatus(`error: ${what}`);
  };

  const q = new URLSearchParams(window.location.search);
  const url = q.get('ws');
  const topic = q.get('topic');
  const version = Number(q.get('v') || 4);
  if (!url || !topic) return fail('the query needs ws= and topic=');
  if (typeof mqtt === 'undefined') return fail('MQTT.js bundle /mqtt.min.js not loaded');

  setStatus('connecting');
  let subscribed = false;
  const client = mqtt.connect(url, {
    clientId: `browser-${Math.random().toString(16).slice(2, 10)}`,
    protocolVersion: version,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: Number(q.get('timeout') || 5000),
  });
  client.on('connect', () => {
    setStatus('connected');
    client.subscribe(topic, { qos: 1 }, (err, granted) => {
      if (err) return fail(`subscribe: ${err.message || err}`);
      const codes = (granted || []).map((g) => g.qos);
      if (codes.length !== 1 || codes[0] !== 1) return fail(`SUBACK granted ${JSON.stringify(codes)}`);
      subscribed = true;
      setStatus('subscribed');
    });
  });
  client.on('message', (t, payload) => {
    const li = document.createElement('li');
    li.textContent = new TextDecoder().decode(payload);
    list.appendChild(li);
    console.log(`message on ${t}: ${li.textContent}`);
  });
  client.on('error', (err) => fail(err.message || String(err)));
  client.on('close', () => {
    if (!subscribed) fail('connection closed before the SUBACK');
    else setStatus('closed');
  });
  window.mqttClient = client;
})();
