// The query API, as the UI calls it. Every failure becomes an Error whose message is what the
// server said (Jaeger v1 `errors[].msg`, v3 `error.message`) or what went wrong on the way.

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function getJSON(url, { signal } = {}) {
  let response;
  try {
    response = await fetch(url, { signal, headers: { Accept: "application/json" } });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach Skein at ${location.host}: ${e.message}`, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    if (response.ok) throw new ApiError(`${url} answered something that is not JSON`, response.status);
  }
  if (!response.ok) {
    const msg = body?.errors?.[0]?.msg ?? body?.error?.message ?? `${response.status} ${response.statusText}`;
    throw new ApiError(msg, response.status);
  }
  return body;
}

export const api = {
  services: () => getJSON("/api/services").then((b) => (b.data ?? []).slice().sort()),
  operations: (service) =>
    getJSON(`/api/services/${encodeURIComponent(service)}/operations`).then((b) => (b.data ?? []).slice().sort()),
  search: (params, opts) => getJSON(`/api/traces?${params}`, opts).then((b) => b.data ?? []),
  traceView: (id, opts) => getJSON(`/api/v1/traces/${encodeURIComponent(id)}/view`, opts),
  doctor: (query) => getJSON(`/api/v1/doctor?${query}`),
  diagnosis: (id, opts) => getJSON(`/api/v1/traces/${encodeURIComponent(id)}/diagnosis`, opts),
  serviceMap: (endTs, lookbackMs) => getJSON(`/api/v1/service-map?endTs=${endTs}&lookback=${lookbackMs}`),
  dependencies: (endTs, lookbackMs) =>
    getJSON(`/api/dependencies?endTs=${endTs}&lookback=${lookbackMs}`).then((b) => b.data ?? []),
  /** Jaeger's metrics API: `kind` is calls, errors or latencies; `query` its parameters. */
  metrics: (kind, query) => getJSON(`/api/metrics/${kind}?${new URLSearchParams(query)}`).then((b) => b.metrics ?? []),
};
