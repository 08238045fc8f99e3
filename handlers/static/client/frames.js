/**
 * The payloads of the gateway's frames, as typed objects (docs/protocol.md; the machine-readable
 * form is docs/asyncapi.yaml). Fields a newer gateway adds are kept on the objects as they come.
 */
export {};
