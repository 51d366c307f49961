/**
 * Failures of the CLI's own work (starting a cluster, talking to a coordinator) that are not
 * engine errors: a tag to grep for (CLUSTER, a gRPC status name) and a message that says what
 * was wrong and what to do. main.ts prints them without a stack.
 */
export class CliError extends Error {
  constructor(readonly tag: string, message: string) {
    super(message);
    this.name = "CliError";
  }
}
