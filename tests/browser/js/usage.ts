// Compiled (never run) by tests/browser/test_types.py: what agentcast.d.ts must accept,
// and what it must refuse (@ts-expect-error lines fail the check if they compile).
import {
  AgentcastClient,
  type AgentStatus,
  type ChatMessage,
  type PresenceStatus,
  closeDecision,
} from "./agentcast.js";

const client = new AgentcastClient("/ws", { token: "abc123", getToken: async () => "fresh" });
client.on("agent_status", (data: AgentStatus, message) => {
  const name: string = data.agentName;
  const id: string | undefined = message.id;
  return [name, id, data.progress ?? 0];
});
client.on("chat_message", (data: ChatMessage) => data.conversationId);
client.on("presence_state", ({ users }) => users.map((user) => user.status));
client.on("agent_state", ({ agents }) => agents.length);
client.on("resume", ({ complete, replayed }) => (complete ? replayed : 0));
client.on("disconnect", ({ code, reason, reconnectIn }) => [code, reason, reconnectIn]);
client.on("state", ({ state, previous }) => state === "reconnecting" || previous === "open");
const away: PresenceStatus = "away";
client.setPresence(away);
client.subscribe("conversation:conv-123");
client.subscribe("conversation:conv-123", { since: "1766754000000-000000000042" });
client.subscribe("conversation:conv-123", { since: null });
client.on("subscribed", ({ channel, complete, replayed }) =>
  complete === false ? `reload ${channel}` : replayed ?? 0,
);
client.connect().close(1000, "bye");
const decision: "reconnect" | "refresh" | "stop" = closeDecision(4001);

// @ts-expect-error: not a presence status
client.setPresence("sleeping");
// @ts-expect-error: agent_status data has no `level`
client.on("agent_status", (data) => data.level);
// @ts-expect-error: since is an id (a string)
client.subscribe("conversation:conv-123", { since: 42 });
// @ts-expect-error: tokenIn takes query, subprotocol or auto
new AgentcastClient("/ws", { tokenIn: "header" });

export { decision };
