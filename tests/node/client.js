// The seed document's Node.js client (../shared/seed/000_1b816dd49caea717.txt,
// "Node.js Client"), unchanged except for the URL, which the test passes as argv[2].
const WebSocket = require('ws');

const ws = new WebSocket(process.argv[2]);

ws.on('open', () => {
  console.log('✅ Connected');

  // Send presence
  ws.send(JSON.stringify({
    type: 'user_presence',
    data: 'online'
  }));
});

ws.on('message', (data) => {
  const message = JSON.parse(data);
  console.log('📨', message);
});

ws.on('close', () => {
  console.log('🔌 Disconnected');
});
