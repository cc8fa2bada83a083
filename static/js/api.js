// Talking to the BirdsDao HTTP API (shared/API.md): JSON calls, the SSE stream of /get_response,
// uploads with progress, the optional API token, and turning error JSON into readable messages.

const TOKEN_KEY = "birdsdao.token";

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}

export function setToken(value) {
  try {
    if (value) localStorage.setItem(TOKEN_KEY, value); else localStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token then lives only in the field */ }
}

function authHeaders() {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** An error carrying the contract's {"error", "code"} so the page can show the sentence, not JSON. */
export class ApiError extends Error {
  constructor(message, code, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

const STATUS_TEXT = {
  401: "需要 API 令牌（在“设置”里填写）。The API token is needed (see Settings).",
  403: "请求被拒绝。Request refused.",
  404: "找不到。Not found.",
  413: "文件太大。File too large.",
  503: "模型暂不可用。Model unavailable.",
};

/** Build an ApiError from a non-2xx response: the JSON "error" when there is one, else a plain sentence. */
export async function errorFrom(response) {
  let message = "";
  let code = "http_error";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
    if (body && typeof body.code === "string") code = body.code;
  } catch { /* not JSON (a proxy's HTML page): fall back to the status */ }
  if (!message) message = STATUS_TEXT[response.status] || `服务器错误 Server error (HTTP ${response.status})`;
  return new ApiError(message, code, response.status);
}

const CODE_TEXT = {
  token_required: "此服务器未设置 API 令牌，只接受本机的修改。This server takes changes only from its own machine until its operator sets an API token.",
};

/** A readable sentence for any failure: API errors, network errors, aborted requests. */
export function describeError(err) {
  if (err instanceof ApiError) {
    if (err.status === 401) return `${err.message} — ${STATUS_TEXT[401]}`;
    return CODE_TEXT[err.code] || err.message;
  }
  if (err && err.name === "AbortError") return "已停止。Stopped.";
  if (err instanceof TypeError) return "无法连接服务器。Cannot reach the server.";
  return String((err && err.message) || err);
}

function toFormData(fields) {
  if (fields instanceof FormData) return fields;
  const form = new FormData();
  for (const [key, value] of Object.entries(fields || {})) {
    if (value === undefined || value === null) continue;
    form.append(key, value);
  }
  return form;
}

export async function getJSON(url, { signal } = {}) {
  const response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() }, signal });
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** POST form fields with the API token; a non-2xx answer throws ApiError with the server's message. */
async function post(url, fields, accept, signal) {
  const response = await fetch(url, {
    method: "POST",
    body: toFormData(fields),
    headers: { Accept: accept, ...authHeaders() },
    signal,
  });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export async function postForm(url, fields, { signal } = {}) {
  return (await post(url, fields, "application/json", signal)).json();
}

/**
 * POST a form and read a text/event-stream answer: calls onEvent(obj) for every `data:` JSON event.
 * A server that answers plain JSON instead (an error, or a backend that cannot stream) is handled too:
 * errors throw ApiError, a JSON reply is passed on as {delta: response} then {done: true, ...}.
 */
export async function postStream(url, fields, onEvent, { signal } = {}) {
  const response = await post(url, fields, "text/event-stream", signal);
  const type = response.headers.get("Content-Type") || "";
  if (!type.includes("text/event-stream")) {
    const body = await response.json();
    onEvent({ delta: body.response || "" });
    onEvent({ ...body, done: true });
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  const flush = (block) => {
    // One SSE event: its `data:` lines joined by newlines (other fields such as `event:` are ignored).
    const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).replace(/^ /, "")).join("\n");
    if (!data) return;
    let event;
    try { event = JSON.parse(data); } catch { return; }
    onEvent(event);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      flush(block);
    }
  }
  buffer += decoder.decode();
  if (buffer.trim()) flush(buffer);
}

/**
 * Upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
 * Returns {promise, abort}; onProgress(fraction 0..1) while the body is sent.
 */
export function uploadWithProgress(url, fields, onProgress) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    xhr.open("POST", url);
    xhr.setRequestHeader("Accept", "application/json");
    for (const [key, value] of Object.entries(authHeaders())) xhr.setRequestHeader(key, value);
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* handled below */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) {
        onProgress(1);
        resolve(body);
      } else {
        const message = (body && typeof body.error === "string" && body.error)
          || STATUS_TEXT[xhr.status] || `服务器错误 Server error (HTTP ${xhr.status})`;
        reject(new ApiError(message, (body && body.code) || "http_error", xhr.status));
      }
    });
    xhr.addEventListener("error", () => reject(new TypeError("network error")));
    xhr.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
    xhr.send(toFormData(fields));
  });
  return { promise, abort: () => xhr.abort() };
}
