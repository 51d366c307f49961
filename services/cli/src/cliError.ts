/**
 * Failures of the CLI's own work (starting a cluster, talking to a coordinator) that are not
 * engine errors: a tag to grep for (CLUSTER, a gRPC status name) and a message that says what
 * was wrong and what to do. main.ts prints them without a stack.
 */
import { TypedError } from "../../core/src/index.js";

export class CliError extends TypedError<string> {
  constructor(tag: string, message: string) {
    super(tag, "", message);
  }

  get tag(): string {
    return this.code;
  }
}
