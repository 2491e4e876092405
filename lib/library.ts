// Facts about the loaded native library.
import { lib, libraryPath } from "./ffi/library.ts";

export { libraryPath };

/** Version string of libflashinfer.so. */
export function version(): string {
  return String(lib().fi_version());
}

/** True when libflashinfer.so was built with its CUDA backend (a GPU may still be absent). */
export function hasCudaBackend(): boolean {
  return lib().fi_has_cuda_backend() === 1;
}
