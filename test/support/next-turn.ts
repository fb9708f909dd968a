/** One turn of the event loop: everything already queued with setImmediate has run. */
export const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
