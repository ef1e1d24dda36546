// libgeo.so, version 1, with four bugs the patch fixes.
#include "geo.h"

namespace geo {

Shape::~Shape() = default;

Rect::Rect(double width, double height) : width_(width), height_(height) {}

double Rect::area() const
{
    return width_ * width_;                 // bug: the width twice
}

double Rect::perimeter() const
{
    return width_ + height_;                // bug: half of it
}

int clamp(int value)
{
    return clamp(value, 0, 100);
}

int clamp(int value, int low, int high)
{
    return value < low ? low : value >= high ? high - 1 : value;   // bug: high is excluded
}

double total_area(const Shape *const *shapes, int count)
{
    double total = 0;
    for (int i = 0; i + 1 < count; i++)     // bug: the last shape is left out
        total += shapes[i]->area();
    return total;
}

}  // namespace geo

int geo_version()
{
    return 1;
}
