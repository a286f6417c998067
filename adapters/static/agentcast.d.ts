// Type declarations for agentcast.js, the agentcast browser client.

export declare const SUBPROTOCOL: "agentcast.v1";
export declare const RECONNECT_CODES: readonly number[];
export declare const TOKEN_EXPIRED: 4001;
export declare const PRESENCE_STATUSES: readonly PresenceStatus[];

export type PresenceStatus = "online" | "away" | "busy" | "offline";
export type AgentState = "idle" | "working" | "stopped";
export type NotificationLevel = "info" | "success" | "warning" | "error";
export type ClientState = "idle" | "connecting" | "open" | "reconnecting" | "stopped" | "closed";

export interface AgentStatus {
  agentName: string;
  state: AgentState;
  currentTask?: string;
  progress?: number;
}

export interface ChatMessage {
  conversationId: string;
  messageId: string;
  content: string;
  sender: string;
  timestamp: string;
}

export interface Notification {
  level: NotificationLevel;
  message: string;
}

export interface UserPresence {
  userId: string;
  status: PresenceStatus;
}

export interface AuthResult {
  success: boolean;
  userId?: string;
  error?: string;
}

export interface ServerError {
  error: string;
  code?: string;
}

export interface ResumeResult {
  complete: boolean;
  replayed?: number;
}

/** `complete` and `replayed` answer a `subscribe` with `since` only. */
export interface SubscribedResult {
  channel: string;
  complete?: boolean;
  replayed?: number;
}

export interface SubscribeOptions {
  /** The id of a message seen earlier: the channel's messages after it come first. */
  since?: string | null;
}

/** The `data` of each server message type. */
export interface MessageData {
  auth: AuthResult;
  ping: undefined;
  pong: undefined;
  agent_status: AgentStatus;
  chat_message: ChatMessage;
  notification: Notification;
  user_presence: UserPresence;
  presence_state: { users: UserPresence[] };
  agent_state: { agents: AgentStatus[] };
  error: ServerError;
  subscribed: SubscribedResult;
  unsubscribed: { channel: string };
  resume: ResumeResult;
}

export interface Envelope<T extends keyof MessageData = keyof MessageData> {
  type: T;
  data?: MessageData[T];
  timestamp?: string;
  /** Broadcasts carry an id: where a reconnect resumes. */
  id?: string;
}

export interface CloseInfo {
  code: number;
  reason: string;
  /** Seconds until the next attempt; null when the client stops here. */
  reconnectIn: number | null;
}

/** The client's own events. */
export interface ClientEvents {
  message: Envelope;
  state: { state: ClientState; previous: ClientState };
  open: { since: string | null; attempt: number };
  disconnect: CloseInfo;
}

export interface BackoffOptions {
  /** Seconds; default 0.5. */
  base?: number;
  /** Seconds; default 20. */
  cap?: number;
  /** Seconds open after which the attempt count starts over; default 60. */
  stable?: number;
}

export interface ClientOptions {
  token?: string | null;
  /** Asked for a token when there is none, after a 4001, and before a JWT's `exp`. */
  getToken?: () => string | Promise<string>;
  /** Where the token goes; "auto" (default): the subprotocol when it can hold it. */
  tokenIn?: "auto" | "subprotocol" | "query";
  /** Channels to subscribe to, in the URL of every connection. */
  channels?: Iterable<string>;
  /** Resume from this id on the first connection. */
  since?: string | null;
  /** Presence to set after every successful auth. */
  presence?: PresenceStatus | null;
  /** Reconnect after a close that allows it; default true. */
  reconnect?: boolean;
  backoff?: BackoffOptions;
  /** Seconds without any message (or without the connection opening) after which the
   * server is presumed gone; default 90, 0 or null: never. */
  idleTimeout?: number | null;
  /** Seconds before a JWT's `exp` to refresh it in band; default 30. */
  refreshMargin?: number;
  // For tests: what the client uses of its environment.
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  random?: () => number;
  setTimeout?: (callback: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
  /** Milliseconds since the epoch. */
  now?: () => number;
}

export declare function closeDecision(code: number | null | undefined): "reconnect" | "refresh" | "stop";
export declare function jwtExpiry(token: string | null): number | null;
export declare function webSocketUrl(url: string | URL, base?: string): URL;

export declare class Backoff {
  constructor(options?: BackoffOptions);
  base: number;
  cap: number;
  stable: number;
  attempt: number;
  next(random: number): number;
  connectedFor(seconds: number): void;
}

export declare class AgentcastClient {
  constructor(url: string | URL, options?: ClientOptions);
  readonly url: URL;
  readonly backoff: Backoff;
  readonly state: ClientState;
  readonly lastId: string | null;
  readonly userId: string | null;
  readonly lastClose: CloseInfo | null;
  readonly resumed: ResumeResult | null;
  readonly presence: PresenceStatus | null;
  readonly channels: string[];
  on<T extends keyof MessageData>(
    type: T,
    handler: (data: MessageData[T], message: Envelope<T>) => void,
  ): () => void;
  on<E extends keyof ClientEvents>(type: E, handler: (event: ClientEvents[E]) => void): () => void;
  connect(): this;
  close(code?: number, reason?: string): void;
  send(message: { type: string; data?: unknown }): boolean;
  ping(): boolean;
  setPresence(status: PresenceStatus): boolean;
  subscribe(channel: string, options?: SubscribeOptions): void;
  unsubscribe(channel: string): void;
  refreshToken(token?: string): Promise<boolean>;
}
