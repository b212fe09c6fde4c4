// Not part of the core: a module that multiplies, so that the multiplier check in hw/synth.sh is
// shown to catch one (CTest hw_multiplier_check_catches_a_multiply expects it to fail).
module deliberate_multiply (
    input  wire [7:0]  a,
    input  wire [7:0]  b,
    output wire [15:0] y
);
  assign y = a * b;
endmodule
