/** A typed event emitter small enough to read at a glance: no runtime dependency, and a listener
 * that throws is reported (console.error) without stopping the others or the client. */
export class Emitter {
    listeners = new Map();
    /** Calls `listener` for every `type` event; returns the function that removes it. */
    on(type, listener) {
        let set = this.listeners.get(type);
        if (set === undefined) {
            set = new Set();
            this.listeners.set(type, set);
        }
        set.add(listener);
        return () => this.off(type, listener);
    }
    /** Like on(), for the next event only. */
    once(type, listener) {
        const off = this.on(type, (event) => {
            off();
            listener(event);
        });
        return off;
    }
    off(type, listener) {
        this.listeners.get(type)?.delete(listener);
    }
    emit(type, event) {
        const set = this.listeners.get(type);
        if (set === undefined)
            return;
        for (const listener of [...set]) {
            try {
                listener(event);
            }
            catch (err) {
                console.error(`realtime-gateway client: a '${String(type)}' listener threw`, err);
            }
        }
    }
}
