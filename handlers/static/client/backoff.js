/** Reconnect delays: exponential, capped, with jitter so a restarted gateway is not hit by every
 * client in the same millisecond. */
export class Backoff {
    random;
    initialMs;
    maxMs;
    factor;
    jitter;
    constructor(options = {}, random = Math.random) {
        this.random = random;
        this.initialMs = options.initialMs ?? 500;
        this.maxMs = options.maxMs ?? 15_000;
        this.factor = options.factor ?? 2;
        this.jitter = options.jitter ?? 0.5;
        if (!(this.initialMs >= 0 && this.maxMs >= this.initialMs && this.factor >= 1)) {
            throw new RangeError("backoff: need 0 <= initialMs <= maxMs and factor >= 1");
        }
        if (!(this.jitter >= 0 && this.jitter <= 1))
            throw new RangeError("backoff: jitter is a fraction, 0 to 1");
    }
    /** The wait before attempt `attempt` (0 for the first retry). */
    delay(attempt) {
        const base = Math.min(this.maxMs, this.initialMs * this.factor ** Math.min(attempt, 32));
        return Math.round(base * (1 - this.jitter * this.random()));
    }
}
